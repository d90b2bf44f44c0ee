// Command gosigner signs with a SigningKeyPolicy's active key in Go (github.com/golang-jwt/jwt/v5),
// from the mounted signing Secret: what signing_key_operator.sign does in Python. The docs point
// here (examples/signers/README.md) and the conformance suite runs it (test_signer_snippets.py).
//
// The signing Secret mounted at DIR holds kid, alg, private.pem and lifetimes.json. The kubelet
// updates it by swapping the ..data symlink, so the key and the lifetime are read again whenever
// ..data points elsewhere: a new key or lifetime reaches the signer without a restart. Every
// token gets kid, iat, exp = iat + the policy's lifetime (or a class's; shorter may be asked
// for, never longer) and a random jti.
//
// Protocol (stdin/stdout, one line each way): `gosigner --dir DIR`, then a JSON line
// {"claims": {...}, "class": "admin", "lifetime": 60} answers a token or "fail: <reason>".
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type lifetimes struct {
	TokenLifetimeSeconds int64            `json:"tokenLifetimeSeconds"`
	ClockSkewSeconds     int64            `json:"clockSkewSeconds"`
	Classes              map[string]int64 `json:"classes"`
}

type signingKey struct {
	kid       string
	method    jwt.SigningMethod
	key       any
	lifetimes lifetimes
}

// MountedSigner signs with whatever key the mounted signing Secret holds now.
type MountedSigner struct {
	dir       string
	mu        sync.Mutex
	version   string
	current   *signingKey
	LastError error
}

// readVersion: ..data's target names the version; a plain directory is compared by its files' stat.
func (s *MountedSigner) readVersion() (version string, base string) {
	if target, err := os.Readlink(filepath.Join(s.dir, "..data")); err == nil {
		return "data:" + target, filepath.Join(s.dir, target)
	}
	var parts []string
	for _, name := range []string{"kid", "alg", "private.pem", "lifetimes.json"} {
		if info, err := os.Stat(filepath.Join(s.dir, name)); err == nil {
			parts = append(parts, fmt.Sprintf("%d:%d", info.ModTime().UnixNano(), info.Size()))
		} else {
			parts = append(parts, "-")
		}
	}
	return "stat:" + strings.Join(parts, ","), s.dir
}

func load(base string) (*signingKey, error) {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(base, name)) }
	kid, err := read("kid")
	if err != nil {
		return nil, err
	}
	alg, err := read("alg")
	if err != nil {
		return nil, err
	}
	method := jwt.GetSigningMethod(strings.TrimSpace(string(alg)))
	if method == nil {
		return nil, fmt.Errorf("unsupported alg %q", strings.TrimSpace(string(alg)))
	}
	raw, err := read("private.pem")
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("private.pem is not a PKCS#8 PEM private key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("private.pem could not be parsed") // never the key itself
	}
	document, err := read("lifetimes.json")
	if err != nil {
		return nil, err
	}
	var told lifetimes
	if err := json.Unmarshal(document, &told); err != nil || told.TokenLifetimeSeconds <= 0 {
		return nil, errors.New("lifetimes.json: tokenLifetimeSeconds must be a whole number of seconds, more than 0")
	}
	return &signingKey{kid: strings.TrimSpace(string(kid)), method: method, key: key, lifetimes: told}, nil
}

func (s *MountedSigner) key() (*signingKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	version, base := s.readVersion()
	if version != s.version {
		s.version = version // an unusable version is reported once, not read again per token
		if loaded, err := load(base); err != nil {
			s.LastError = fmt.Errorf("the signing Secret is unusable: %w", err)
		} else {
			s.current, s.LastError = loaded, nil
		}
	}
	if s.current == nil {
		if s.LastError == nil {
			return nil, errors.New("no signing Secret read yet")
		}
		return nil, s.LastError
	}
	return s.current, nil
}

// Sign returns a token of claims with kid, iat, exp and a random jti. lifetimeClass "" is the
// policy's tokenLifetime; lifetime 0 is the class's whole lifetime, longer is refused.
func (s *MountedSigner) Sign(claims jwt.MapClaims, lifetimeClass string, lifetime int64) (string, error) {
	for _, name := range []string{"iat", "exp", "jti"} {
		if _, set := claims[name]; set {
			return "", fmt.Errorf("claim %s is set by the signer", name)
		}
	}
	key, err := s.key()
	if err != nil {
		return "", err
	}
	allowed := key.lifetimes.TokenLifetimeSeconds
	if lifetimeClass != "" {
		var known bool
		if allowed, known = key.lifetimes.Classes[lifetimeClass]; !known {
			return "", fmt.Errorf("the policy has no token lifetime class %q", lifetimeClass)
		}
	}
	if lifetime < 0 || lifetime > allowed {
		return "", fmt.Errorf("asked for a %ds token; the policy allows at most %ds", lifetime, allowed)
	}
	if lifetime == 0 {
		lifetime = allowed
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	iat := time.Now().Unix()
	payload := jwt.MapClaims{}
	for name, value := range claims {
		payload[name] = value
	}
	payload["iat"], payload["exp"], payload["jti"] = iat, iat+lifetime, base64.RawURLEncoding.EncodeToString(jti)
	token := jwt.NewWithClaims(key.method, payload)
	token.Header["kid"] = key.kid
	return token.SignedString(key.key)
}

func main() {
	dir := flag.String("dir", "", "the mounted signing Secret")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: gosigner --dir DIR")
		os.Exit(2)
	}
	signer := &MountedSigner{dir: *dir}
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			continue
		}
		var request struct {
			Claims   jwt.MapClaims `json:"claims"`
			Class    string        `json:"class"`
			Lifetime int64         `json:"lifetime"`
		}
		answer := ""
		if err := json.Unmarshal([]byte(line), &request); err != nil {
			answer = "fail: not a JSON request"
		} else if token, err := signer.Sign(request.Claims, request.Class, request.Lifetime); err != nil {
			answer = "fail: " + err.Error()
		} else {
			answer = token
		}
		fmt.Println(strings.Join(strings.Fields(answer), " "))
	}
}
