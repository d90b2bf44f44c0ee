package dev.signingkeys.examples.revocation;

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
			@Value("${signingkeys.issuer:}") String issuer, RevocationList revocations) {
		SignatureAlgorithm signatureAlgorithm = SignatureAlgorithm.from(algorithm);
		Assert.notNull(signatureAlgorithm, () -> "signingkeys.jws-algorithm: Spring has no SignatureAlgorithm " + algorithm);
		NimbusJwtDecoder decoder = NimbusJwtDecoder.withJwkSetUri(jwksUrl).jwsAlgorithm(signatureAlgorithm).build();
		OAuth2TokenValidator<Jwt> defaults = StringUtils.hasText(issuer) ? JwtValidators.createDefaultWithIssuer(issuer)
				: JwtValidators.createDefault();
		DelegatingOAuth2TokenValidator<Jwt> validator = new DelegatingOAuth2TokenValidator<>(defaults,
				new RevocationValidator(revocations));
		// Stop at the first failure: an expired or foreign token is refused for that, without a
		// look at the revocation list (and without failing for it while the list is unavailable).
		validator.setFailOnError(true);
		decoder.setJwtValidator(validator);
		return decoder;
	}

}
