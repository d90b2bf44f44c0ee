// Command goverifier verifies JWTs the way a Go service does: github.com/MicahParks/keyfunc/v3
// (a jwkset HTTP client) as the jwt.Keyfunc of github.com/golang-jwt/jwt/v5.
//
// Protocol (stdin/stdout, one line each way): a JWT answers "ok" or "fail: <reason>";
// "url <URL> [ALG]" builds a fresh client for that JWKS URL and answers "ready" (keyfunc
// checks the token's alg against the key's, so ALG is ignored).
//
// Without flags the client is keyfunc.NewDefaultCtx: background refresh every 1 h, unknown-kid
// refresh at most once per 5 min (waiting at most 1 min for that limiter). The flags scale
// those times (tests/conformance/README.md says by how much).
//
// -jwks-file PATH instead of a URL: an HMAC policy's verification Secret as mounted (its
// jwks.json), a keyfunc.NewJWKSetJSON read again whenever the file changes (mountedJWKSet, the
// snippet README.md documents).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

var (
	jwksURL          = flag.String("url", "", "JWKS URL (else send a `url` line first)")
	refreshInterval  = flag.Duration("refresh-interval", 0, "background refresh (default: keyfunc's 1h)")
	unknownKIDEvery  = flag.Duration("unknown-kid-every", 0, "unknown-kid refresh rate limit (default: keyfunc's 5m)")
	rateLimitWaitMax = flag.Duration("rate-limit-wait-max", 0, "longest wait for that limiter (default: keyfunc's 1m)")
	leeway           = flag.Duration("leeway", 0, "exp/nbf/iat leeway (default: golang-jwt's 0)")
	jwksFile         = flag.String("jwks-file", "", "a mounted JWK Set file, read again when it changes (instead of -url)")
)

// mountedJWKSet reads a JWK Set file again whenever its identity changes: the kubelet replaces
// a mounted Secret's files by swapping a symlink, so inode, mtime and size change with it.
type mountedJWKSet struct {
	path    string
	version string
	kf      keyfunc.Keyfunc
}

func (m *mountedJWKSet) Keyfunc(token *jwt.Token) (any, error) {
	info, err := os.Stat(m.path)
	if err != nil {
		return nil, err
	}
	var inode uint64
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		inode = st.Ino
	}
	version := fmt.Sprintf("%d:%d:%d", inode, info.ModTime().UnixNano(), info.Size())
	if version != m.version {
		raw, err := os.ReadFile(m.path)
		if err != nil {
			return nil, err
		}
		kf, err := keyfunc.NewJWKSetJSON(raw)
		if err != nil {
			return nil, err
		}
		m.kf, m.version = kf, version
	}
	return m.kf.Keyfunc(token)
}

type verifier struct {
	cancel  context.CancelFunc
	keyfunc jwt.Keyfunc
	parser  *jwt.Parser
}

func newVerifier(url string) (*verifier, error) {
	ctx, cancel := context.WithCancel(context.Background())
	var kf keyfunc.Keyfunc
	var err error
	if *refreshInterval == 0 && *unknownKIDEvery == 0 && *rateLimitWaitMax == 0 {
		kf, err = keyfunc.NewDefaultCtx(ctx, []string{url})
	} else {
		override := keyfunc.Override{RefreshInterval: *refreshInterval, RateLimitWaitMax: *rateLimitWaitMax}
		if *unknownKIDEvery > 0 {
			override.RefreshUnknownKID = rate.NewLimiter(rate.Every(*unknownKIDEvery), 1)
		}
		kf, err = keyfunc.NewDefaultOverrideCtx(ctx, []string{url}, override)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	options := []jwt.ParserOption{jwt.WithExpirationRequired()}
	if *leeway > 0 {
		options = append(options, jwt.WithLeeway(*leeway))
	}
	return &verifier{cancel: cancel, keyfunc: kf.Keyfunc, parser: jwt.NewParser(options...)}, nil
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func newFileVerifier(path string) *verifier {
	options := []jwt.ParserOption{jwt.WithExpirationRequired()}
	if *leeway > 0 {
		options = append(options, jwt.WithLeeway(*leeway))
	}
	mounted := &mountedJWKSet{path: path}
	return &verifier{cancel: func() {}, keyfunc: mounted.Keyfunc, parser: jwt.NewParser(options...)}
}

func main() {
	flag.Parse()
	var current *verifier
	if *jwksFile != "" {
		current = newFileVerifier(*jwksFile)
	}
	if *jwksURL != "" {
		v, err := newVerifier(*jwksURL)
		if err != nil {
			fmt.Fprintln(os.Stderr, "goverifier:", err)
			os.Exit(2)
		}
		current = v
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "url "):
			if current != nil {
				current.cancel()
			}
			v, err := newVerifier(strings.Fields(line)[1])
			if err != nil {
				current = nil
				fmt.Fprintln(out, "fail: "+oneLine(err))
			} else {
				current = v
				fmt.Fprintln(out, "ready")
			}
		case current == nil:
			fmt.Fprintln(out, "fail: no JWKS URL yet")
		default:
			if _, err := current.parser.Parse(line, current.keyfunc); err != nil {
				fmt.Fprintln(out, "fail: "+oneLine(err))
			} else {
				fmt.Fprintln(out, "ok")
			}
		}
		out.Flush()
	}
}
