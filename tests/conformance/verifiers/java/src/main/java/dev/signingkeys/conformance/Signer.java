package dev.signingkeys.conformance;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.SecureRandom;
import java.security.interfaces.ECPrivateKey;
import java.security.interfaces.EdECPrivateKey;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Date;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import com.google.crypto.tink.subtle.Ed25519Sign;
import com.nimbusds.jose.JOSEException;
import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.JWSHeader;
import com.nimbusds.jose.JWSSigner;
import com.nimbusds.jose.crypto.ECDSASigner;
import com.nimbusds.jose.crypto.Ed25519Signer;
import com.nimbusds.jose.crypto.RSASSASigner;
import com.nimbusds.jose.jwk.Curve;
import com.nimbusds.jose.jwk.OctetKeyPair;
import com.nimbusds.jose.util.Base64URL;
import com.nimbusds.jose.util.JSONObjectUtils;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.SignedJWT;

/**
 * Signs with a SigningKeyPolicy's active key in Java (Nimbus JOSE+JWT), from the mounted signing
 * Secret: what signing_key_operator.sign does in Python. The docs point here
 * (examples/signers/README.md) and the conformance suite runs it (test_signer_snippets.py).
 *
 * <p>The signing Secret mounted at DIR holds kid, alg, private.pem (PKCS#8) and lifetimes.json.
 * The kubelet updates it by swapping the ..data symlink, so the key and the lifetime are read
 * again whenever ..data points elsewhere: a new key or lifetime reaches the signer without a
 * restart. Every token gets kid, iat, exp = iat + the policy's lifetime (or a class's; shorter
 * may be asked for, never longer) and a random jti.
 *
 * <p>RS, PS and ES keys are the JDK's own; Nimbus signs Ed25519 through Google Tink
 * ({@code com.google.crypto.tink:tink}, which Nimbus declares optional), so an EdDSA policy needs
 * Tink on the class path.
 *
 * <pre>
 * java -cp java-verifier.jar dev.signingkeys.conformance.Signer --dir DIR
 * </pre>
 *
 * Protocol (stdin/stdout, one line each way): a JSON line
 * {"claims": {...}, "class": "admin", "lifetime": 60} answers a token or "fail: reason".
 */
public final class Signer {

	private static final List<String> FILES = List.of("kid", "alg", "private.pem", "lifetimes.json");

	private static final SecureRandom RANDOM = new SecureRandom();

	/** The active key as one version of the mount holds it. */
	record SigningKey(String kid, JWSAlgorithm alg, JWSSigner signer, long lifetimeSeconds, Map<String, Long> classes) {
	}

	/** Signs with whatever key the mounted signing Secret holds now. */
	public static final class MountedSigner {

		private final Path dir;

		private String version;

		private SigningKey current;

		private String lastError;

		public MountedSigner(Path dir) {
			this.dir = dir;
		}

		/** Why the newest version of the mount is not used, or null. */
		public synchronized String lastError() {
			return this.lastError;
		}

		/** ..data's target names the version; a plain directory is compared by its files' stat. */
		private String[] readVersion() {
			try {
				Path target = Files.readSymbolicLink(this.dir.resolve("..data"));
				return new String[] { "data:" + target, this.dir.resolve(target).toString() };
			}
			catch (IOException | UnsupportedOperationException notAVolume) {
				List<String> parts = new ArrayList<>();
				for (String name : FILES) {
					try {
						BasicFileAttributes stat = Files.readAttributes(this.dir.resolve(name), BasicFileAttributes.class);
						parts.add(stat.lastModifiedTime().toMillis() + ":" + stat.size());
					}
					catch (IOException missing) {
						parts.add("-");
					}
				}
				return new String[] { "stat:" + String.join(",", parts), this.dir.toString() };
			}
		}

		private static SigningKey load(Path base) throws Exception {
			String kid = Files.readString(base.resolve("kid")).strip();
			JWSAlgorithm alg = JWSAlgorithm.parse(Files.readString(base.resolve("alg")).strip());
			String pem = Files.readString(base.resolve("private.pem"));
			if (!pem.contains("-----BEGIN PRIVATE KEY-----")) {
				throw new IllegalArgumentException("private.pem is not a PKCS#8 PEM private key");
			}
			byte[] der = Base64.getMimeDecoder().decode(pem.replaceAll("-----[A-Z ]+-----", ""));
			JWSSigner signer;
			try {
				signer = signerFor(alg, kid, der);
			}
			catch (JOSEException | java.security.GeneralSecurityException unusable) {
				// the exception's own words could carry the key's bytes: never pass them on
				throw new IllegalArgumentException("private.pem could not be used for " + alg);
			}
			Map<String, Object> told = JSONObjectUtils.parse(Files.readString(base.resolve("lifetimes.json")));
			long lifetime = wholeSeconds(told.get("tokenLifetimeSeconds"), "tokenLifetimeSeconds");
			Map<String, Long> classes = new HashMap<>();
			Map<String, Object> named = JSONObjectUtils.getJSONObject(told, "classes");
			if (named != null) {
				for (Map.Entry<String, Object> entry : named.entrySet()) {
					classes.put(entry.getKey(), wholeSeconds(entry.getValue(), "classes." + entry.getKey()));
				}
			}
			return new SigningKey(kid, alg, signer, lifetime, classes);
		}

		private static long wholeSeconds(Object value, String field) {
			if (!(value instanceof Number number) || number.doubleValue() != number.longValue() || number.longValue() <= 0) {
				throw new IllegalArgumentException("lifetimes.json: " + field + " must be a whole number of seconds, more than 0");
			}
			return number.longValue();
		}

		private static JWSSigner signerFor(JWSAlgorithm alg, String kid, byte[] der) throws Exception {
			PKCS8EncodedKeySpec spec = new PKCS8EncodedKeySpec(der);
			if (JWSAlgorithm.Family.RSA.contains(alg)) {
				return new RSASSASigner(KeyFactory.getInstance("RSA").generatePrivate(spec));
			}
			if (JWSAlgorithm.Family.EC.contains(alg)) {
				return new ECDSASigner((ECPrivateKey) KeyFactory.getInstance("EC").generatePrivate(spec));
			}
			if (JWSAlgorithm.EdDSA.equals(alg)) {
				PrivateKey key = KeyFactory.getInstance("Ed25519").generatePrivate(spec);
				byte[] seed = ((EdECPrivateKey) key).getBytes().orElseThrow();
				byte[] publicKey = Ed25519Sign.KeyPair.newKeyPairFromSeed(seed).getPublicKey();
				return new Ed25519Signer(new OctetKeyPair.Builder(Curve.Ed25519, Base64URL.encode(publicKey))
					.d(Base64URL.encode(seed)).keyID(kid).build());
			}
			throw new IllegalArgumentException("unsupported alg " + alg);
		}

		private synchronized SigningKey key() {
			String[] read = readVersion();
			if (!read[0].equals(this.version)) {
				this.version = read[0]; // an unusable version is reported once, not read again per token
				try {
					this.current = load(Path.of(read[1]));
					this.lastError = null;
				}
				catch (NoSuchFileException missing) {
					this.lastError = "the signing Secret is unusable: " + Path.of(missing.getFile()).getFileName() + " is missing";
				}
				catch (Exception unusable) {
					this.lastError = "the signing Secret is unusable: " + unusable.getMessage();
				}
			}
			if (this.current == null) {
				throw new IllegalStateException(this.lastError == null ? "no signing Secret read yet" : this.lastError);
			}
			return this.current;
		}

		/**
		 * A token of claims with kid, iat, exp and a random jti. lifetimeClass null is the policy's
		 * tokenLifetime; lifetime 0 is the class's whole lifetime, longer is refused.
		 */
		public String sign(Map<String, Object> claims, String lifetimeClass, long lifetime) throws Exception {
			for (String name : List.of("iat", "exp", "jti")) {
				if (claims.containsKey(name)) {
					throw new IllegalArgumentException("claim " + name + " is set by the signer");
				}
			}
			SigningKey key = key();
			long allowed = key.lifetimeSeconds();
			if (lifetimeClass != null) {
				Long classLifetime = key.classes().get(lifetimeClass);
				if (classLifetime == null) {
					throw new IllegalArgumentException("the policy has no token lifetime class \"" + lifetimeClass + "\"");
				}
				allowed = classLifetime;
			}
			if (lifetime < 0 || lifetime > allowed) {
				throw new IllegalArgumentException("asked for a " + lifetime + "s token; the policy allows at most " + allowed + "s");
			}
			if (lifetime == 0) {
				lifetime = allowed;
			}
			byte[] jti = new byte[16];
			RANDOM.nextBytes(jti);
			long iat = System.currentTimeMillis() / 1000;
			JWTClaimsSet payload = new JWTClaimsSet.Builder(JWTClaimsSet.parse(claims))
				.issueTime(new Date(iat * 1000))
				.expirationTime(new Date((iat + lifetime) * 1000))
				.jwtID(Base64URL.encode(jti).toString())
				.build();
			SignedJWT token = new SignedJWT(new JWSHeader.Builder(key.alg()).keyID(key.kid()).build(), payload);
			token.sign(key.signer());
			return token.serialize();
		}

	}

	public static void main(String[] args) throws IOException {
		if (args.length != 2 || !args[0].equals("--dir")) {
			System.err.println("usage: Signer --dir DIR");
			System.exit(2);
		}
		MountedSigner signer = new MountedSigner(Path.of(args[1]));
		PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
		BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
		for (String line = in.readLine(); line != null; line = in.readLine()) {
			if (line.isBlank()) {
				continue;
			}
			String answer;
			try {
				Map<String, Object> request = JSONObjectUtils.parse(line);
				Map<String, Object> claims = JSONObjectUtils.getJSONObject(request, "claims");
				Number lifetime = (Number) request.getOrDefault("lifetime", 0L);
				answer = signer.sign(claims == null ? Map.of() : claims, JSONObjectUtils.getString(request, "class"),
						lifetime.longValue());
			}
			catch (java.text.ParseException notJson) {
				answer = "fail: not a JSON request";
			}
			catch (Exception refused) {
				answer = "fail: " + refused.getMessage();
			}
			out.println(answer.replaceAll("\\s+", " "));
		}
	}

}
