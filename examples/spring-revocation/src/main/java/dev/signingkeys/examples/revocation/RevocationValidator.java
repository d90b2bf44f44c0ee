package dev.signingkeys.examples.revocation;

import org.springframework.security.oauth2.core.OAuth2Error;
import org.springframework.security.oauth2.core.OAuth2ErrorCodes;
import org.springframework.security.oauth2.core.OAuth2TokenValidator;
import org.springframework.security.oauth2.core.OAuth2TokenValidatorResult;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.util.Assert;

/**
 * Refuses revoked tokens: the custom {@link OAuth2TokenValidator} Spring Security's reference
 * ("Configuring a Custom Validator") has a resource server add next to the default validators
 * with {@code NimbusJwtDecoder.setJwtValidator}. A revoked token then fails authentication in
 * {@code BearerTokenAuthenticationFilter} like an expired one: 401 with
 * {@code WWW-Authenticate: Bearer error="invalid_token", error_description="jti ... is revoked"}.
 *
 * <p>When no current list can be had, {@link RevocationListUnavailableException} propagates:
 * the request fails as when the JWK Set cannot be fetched (see that class), and no token is
 * accepted unchecked.
 */
public final class RevocationValidator implements OAuth2TokenValidator<Jwt> {

	private static final String ERROR_URI = "https://tools.ietf.org/html/rfc6750#section-3.1";

	private final RevocationList revocations;

	public RevocationValidator(RevocationList revocations) {
		Assert.notNull(revocations, "revocations cannot be null");
		this.revocations = revocations;
	}

	@Override
	public OAuth2TokenValidatorResult validate(Jwt jwt) {
		String reason = this.revocations.revocationReason(jwt);
		if (reason == null) {
			return OAuth2TokenValidatorResult.success();
		}
		return OAuth2TokenValidatorResult.failure(new OAuth2Error(OAuth2ErrorCodes.INVALID_TOKEN, reason, ERROR_URI));
	}

}
