package dev.signingkeys.conformance;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.List;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;

import com.github.benmanes.caffeine.cache.Caffeine;
import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.jwk.JWK;
import com.nimbusds.jose.jwk.JWKSelector;
import com.nimbusds.jose.jwk.JWKSet;
import com.nimbusds.jose.jwk.source.ImmutableJWKSet;
import com.nimbusds.jose.jwk.source.JWKSource;
import com.nimbusds.jose.jwk.source.JWKSourceBuilder;
import com.nimbusds.jose.proc.JWSVerificationKeySelector;
import com.nimbusds.jose.proc.SecurityContext;
import com.nimbusds.jwt.proc.ConfigurableJWTProcessor;
import com.nimbusds.jwt.proc.DefaultJWTClaimsVerifier;
import com.nimbusds.jwt.proc.DefaultJWTProcessor;

import org.springframework.cache.caffeine.CaffeineCache;
import org.springframework.security.oauth2.jose.jws.SignatureAlgorithm;
import org.springframework.security.oauth2.jwt.JwtTimestampValidator;
import org.springframework.security.oauth2.jwt.NimbusJwtDecoder;

/**
 * Java verifiers for the conformance suite, one per process.
 *
 * <pre>
 * java -jar java-verifier.jar nimbus|spring [--url URL] [--alg ALG] [--leeway-s N] [scaling flags]
 * </pre>
 *
 * Protocol (stdin/stdout, one line each way): a JWT answers "ok" or "fail: reason";
 * "url URL [ALG]" builds a fresh verifier for that JWKS URL (and expected algorithm) and answers
 * "ready". Without scaling flags each library keeps its defaults.
 *
 * <ul>
 * <li>nimbus: {@code JWKSourceBuilder.create(url)} (cache 5 min, refresh-ahead 30 s, cache
 * refresh timeout 15 s, rate limit 30 s) under a {@code DefaultJWTProcessor} with a
 * {@code JWSVerificationKeySelector} for ALG. Flags: --cache-ttl-ms, --refresh-timeout-ms,
 * --refresh-ahead-ms, --rate-limit-ms.</li>
 * <li>spring: {@code NimbusJwtDecoder.withJwkSetUri(url).jwsAlgorithm(ALG)} (Spring's own
 * JWKSource: Nimbus cache 5 min, no refresh-ahead, no rate limit) with its default validators.
 * Flag: --cache-ttl-ms hands the builder a Caffeine-backed Spring Cache with that TTL (the
 * Spring way to bound the set's cache time; Spring then turns the Nimbus cache off).</li>
 * <li>nimbus with --jwks-file PATH instead of a URL: an HMAC policy's verification Secret as
 * mounted (its jwks.json), an {@code ImmutableJWKSet} of its {@code OctetSequenceKey}s read again
 * whenever the file changes ({@link MountedJWKSet}, the snippet README.md documents), under the
 * same processor and a {@code JWSVerificationKeySelector} for the HS algorithm.</li>
 * </ul>
 */
public final class Verifier {

	/**
	 * A JWK Set file, read again when it changes: the kubelet replaces a mounted Secret's files by
	 * swapping a symlink, so the file's identity (file key, modification time, size) changes with it.
	 */
	static final class MountedJWKSet implements JWKSource<SecurityContext> {

		private final Path path;

		private String version;

		private ImmutableJWKSet<SecurityContext> keys;

		MountedJWKSet(Path path) {
			this.path = path;
		}

		@Override
		public synchronized List<JWK> get(JWKSelector selector, SecurityContext context) {
			try {
				BasicFileAttributes attributes = Files.readAttributes(this.path, BasicFileAttributes.class);
				String now = attributes.fileKey() + ":" + attributes.lastModifiedTime().toMillis() + ":" + attributes.size();
				if (!now.equals(this.version)) {
					this.keys = new ImmutableJWKSet<>(JWKSet.parse(Files.readString(this.path)));
					this.version = now;
				}
				return this.keys.get(selector, context);
			}
			catch (Exception error) {
				throw new IllegalStateException("cannot read " + this.path + ": " + error.getMessage(), error);
			}
		}

	}

	interface Check {
		void verify(String token) throws Exception;
	}

	private final String mode;

	private final Map<String, String> flags;

	private Verifier(String mode, Map<String, String> flags) {
		this.mode = mode;
		this.flags = flags;
	}

	private long number(String name, long fallback) {
		String value = this.flags.get(name);
		return value == null ? fallback : Long.parseLong(value);
	}

	Check build(String url, String alg) throws Exception {
		return "spring".equals(this.mode) ? spring(url, alg) : nimbus(url, alg);
	}

	Check mounted(String path, String alg) {
		return processor(new MountedJWKSet(Path.of(path)), alg);
	}

	private Check nimbus(String url, String alg) throws Exception {
		JWKSourceBuilder<SecurityContext> builder = JWKSourceBuilder.create(new URL(url));
		if (this.flags.containsKey("cache-ttl-ms")) {
			builder.cache(number("cache-ttl-ms", JWKSourceBuilder.DEFAULT_CACHE_TIME_TO_LIVE),
					number("refresh-timeout-ms", JWKSourceBuilder.DEFAULT_CACHE_REFRESH_TIMEOUT));
		}
		if (this.flags.containsKey("refresh-ahead-ms")) {
			builder.refreshAheadCache(number("refresh-ahead-ms", JWKSourceBuilder.DEFAULT_REFRESH_AHEAD_TIME), false);
		}
		if (this.flags.containsKey("rate-limit-ms")) {
			builder.rateLimited(number("rate-limit-ms", JWKSourceBuilder.DEFAULT_RATE_LIMIT_MIN_INTERVAL));
		}
		return processor(builder.build(), alg);
	}

	private Check processor(JWKSource<SecurityContext> source, String alg) {
		ConfigurableJWTProcessor<SecurityContext> processor = new DefaultJWTProcessor<>();
		processor.setJWSKeySelector(new JWSVerificationKeySelector<>(JWSAlgorithm.parse(alg), source));
		DefaultJWTClaimsVerifier<SecurityContext> claims = new DefaultJWTClaimsVerifier<>(null, Set.of("exp"));
		if (this.flags.containsKey("leeway-s")) {
			claims.setMaxClockSkew((int) number("leeway-s", 60));
		}
		processor.setJWTClaimsSetVerifier(claims);
		return (token) -> processor.process(token, null);
	}

	private Check spring(String url, String alg) {
		NimbusJwtDecoder.JwkSetUriJwtDecoderBuilder builder = NimbusJwtDecoder.withJwkSetUri(url);
		// Spring names the algorithms it accepts; one it has no constant for (EdDSA) cannot be
		// named, and the decoder keeps its RS256 default.
		SignatureAlgorithm algorithm = SignatureAlgorithm.from(alg);
		if (algorithm != null) {
			builder.jwsAlgorithm(algorithm);
		}
		if (this.flags.containsKey("cache-ttl-ms")) {
			builder.cache(new CaffeineCache("jwks", Caffeine.newBuilder()
				.expireAfterWrite(Duration.ofMillis(number("cache-ttl-ms", 300_000)))
				.build()));
		}
		NimbusJwtDecoder decoder = builder.build();
		if (this.flags.containsKey("leeway-s")) {
			decoder.setJwtValidator(new JwtTimestampValidator(Duration.ofSeconds(number("leeway-s", 60))));
		}
		return decoder::decode;
	}

	private static String oneLine(Throwable error) {
		StringBuilder text = new StringBuilder(error.getClass().getSimpleName()).append(": ").append(error.getMessage());
		Throwable cause = error.getCause();
		if (cause != null && cause != error) {
			text.append(" (caused by ").append(cause.getClass().getSimpleName()).append(": ").append(cause.getMessage()).append(")");
		}
		return text.toString().replaceAll("\\s+", " ");
	}

	public static void main(String[] args) throws Exception {
		if (args.length < 1 || !(args[0].equals("nimbus") || args[0].equals("spring"))) {
			System.err.println("usage: java -jar java-verifier.jar nimbus|spring [--flag value ...]");
			System.exit(2);
		}
		Map<String, String> flags = new HashMap<>();
		for (int i = 1; i + 1 < args.length; i += 2) {
			flags.put(args[i].replaceFirst("^--", ""), args[i + 1]);
		}
		Verifier verifier = new Verifier(args[0], flags);
		String alg = flags.getOrDefault("alg", "RS256");
		Check check = flags.containsKey("url") ? verifier.build(flags.get("url"), alg)
				: flags.containsKey("jwks-file") ? verifier.mounted(flags.get("jwks-file"), alg) : null;

		PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
		BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
		String line;
		while ((line = in.readLine()) != null) {
			line = line.trim();
			if (line.isEmpty()) {
				continue;
			}
			String answer;
			if (line.startsWith("url ")) {
				String[] parts = line.split("\\s+");
				try {
					check = verifier.build(parts[1], parts.length > 2 ? parts[2] : alg);
					answer = "ready";
				}
				catch (Throwable error) {
					check = null;
					answer = "fail: " + oneLine(error);
				}
			}
			else if (check == null) {
				answer = "fail: no JWKS URL yet";
			}
			else {
				try {
					check.verify(line);
					answer = "ok";
				}
				catch (Throwable error) {
					answer = "fail: " + oneLine(error);
				}
			}
			out.println(answer);
		}
	}

}
