package dev.signingkeys.examples.revocation;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.security.config.annotation.web.builders.HttpSecurity;
import org.springframework.security.config.annotation.web.configuration.EnableWebSecurity;
import org.springframework.security.oauth2.core.DelegatingOAuth2TokenValidator;
import org.springframework.security.oauth2.core.OAuth2TokenValidator;
import org.springframework.security.oauth2.jose.jws.SignatureAlgorithm;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.security.oauth2.jwt.JwtDecoder;
import org.springframework.security.oauth2.jwt.JwtValidators;
import org.springframework.security.oauth2.jwt.NimbusJwtDecoder;
import org.springframework.security.web.SecurityFilterChain;
import org.springframework.util.Assert;
import org.springframework.util.StringUtils;

/**
 * A resource server that refuses revoked tokens, configured as an application would (with Spring
 * Boot, the same class works unchanged; the properties go to application.yaml).
 *
 * <ul>
 * <li>{@code signingkeys.jwks-url}: the sidecar's {@code /.well-known/jwks.json}</li>
 * <li>{@code signingkeys.revocations-url}: the sidecar's {@code /revocations.json}</li>
 * <li>{@code signingkeys.jws-algorithm}: the policy's algorithm (default ES256, the operator's
 * default; Spring's own default is RS256)</li>
 * <li>{@code signingkeys.issuer}: the policy's issuer, if its tokens carry {@code iss}</li>
 * <li>{@code signingkeys.max-token-lifetime-seconds}: the policy's token lifetime
 * ({@code tokenLifetimeSeconds} of the signing Secret's {@code lifetimes.json}); a longer-lived
 * token is refused. 0 (the default) skips the check</li>
 * <li>{@code signingkeys.clock-skew-seconds}: allowed on top of it (default 60, Spring's own
 * clock skew for {@code exp} and the policies' default clockSkew)</li>
 * </ul>
 */
@Configuration(proxyBeanMethods = false)
@EnableWebSecurity
public class ResourceServerConfig {

	@Bean
	SecurityFilterChain api(HttpSecurity http, JwtDecoder jwtDecoder) throws Exception {
		http.authorizeHttpRequests((authorize) -> authorize.anyRequest().authenticated())
			.oauth2ResourceServer((oauth2) -> oauth2.jwt((jwt) -> jwt.decoder(jwtDecoder)));
		return http.build();
	}

	@Bean
	RevocationList revocationList(@Value("${signingkeys.revocations-url}") String revocationsUrl) {
		return new RevocationList(revocationsUrl);
	}

	@Bean
	JwtDecoder jwtDecoder(@Value("${signingkeys.jwks-url}") String jwksUrl,
			@Value("${signingkeys.jws-algorithm:ES256}") String algorithm,
			@Value("${signingkeys.issuer:}") String issuer,
			@Value("${signingkeys.max-token-lifetime-seconds:0}") long maxTokenLifetimeSeconds,
			@Value("${signingkeys.clock-skew-seconds:60}") long clockSkewSeconds, RevocationList revocations) {
		SignatureAlgorithm signatureAlgorithm = SignatureAlgorithm.from(algorithm);
		Assert.notNull(signatureAlgorithm, () -> "signingkeys.jws-algorithm: Spring has no SignatureAlgorithm " + algorithm);
		NimbusJwtDecoder decoder = NimbusJwtDecoder.withJwkSetUri(jwksUrl).jwsAlgorithm(signatureAlgorithm).build();
		OAuth2TokenValidator<Jwt> defaults = StringUtils.hasText(issuer) ? JwtValidators.createDefaultWithIssuer(issuer)
				: JwtValidators.createDefault();
		List<OAuth2TokenValidator<Jwt>> validators = new ArrayList<>(List.of(defaults));
		if (maxTokenLifetimeSeconds > 0) {
			validators.add(new TokenLifetimeValidator(Duration.ofSeconds(maxTokenLifetimeSeconds),
					Duration.ofSeconds(clockSkewSeconds)));
		}
		validators.add(new RevocationValidator(revocations));
		DelegatingOAuth2TokenValidator<Jwt> validator = new DelegatingOAuth2TokenValidator<>(validators);
		// Stop at the first failure: an expired or foreign token is refused for that, without a
		// look at the revocation list (and without failing for it while the list is unavailable).
		validator.setFailOnError(true);
		decoder.setJwtValidator(validator);
		return decoder;
	}

}
