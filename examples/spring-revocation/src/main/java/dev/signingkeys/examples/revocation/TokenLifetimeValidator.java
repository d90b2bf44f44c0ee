package dev.signingkeys.examples.revocation;

import java.time.Duration;
import java.time.Instant;

import org.springframework.security.oauth2.core.OAuth2Error;
import org.springframework.security.oauth2.core.OAuth2ErrorCodes;
import org.springframework.security.oauth2.core.OAuth2TokenValidator;
import org.springframework.security.oauth2.core.OAuth2TokenValidatorResult;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.util.Assert;

/**
 * Refuses a token that lives longer ({@code exp - iat}) than the policy's token lifetime plus
 * its clock skew. The operator keeps a key published only that long after it stopped signing, so
 * such a token was made by a signer that hard-codes its own lifetime, and it would fail anyway
 * once its key is removed; refusing it at once says why while the signer can still be fixed.
 *
 * <p>A token without {@code iat} is not caught here: in the conformance test such a token reached
 * this validator with an {@code iat} (Spring's claim-set conversion gives it one when there is an
 * {@code exp}) and was accepted. The Python verifier refuses it; a Spring service that must can
 * add its own claim-set converter.
 *
 * <p>The lifetime is the policy's {@code spec.tokenLifetime} (in the signing Secret's
 * {@code lifetimes.json} as {@code tokenLifetimeSeconds}), configured here as it is for the
 * Python verifier's {@code max_token_lifetime}.
 */
public final class TokenLifetimeValidator implements OAuth2TokenValidator<Jwt> {

	private static final String ERROR_URI = "https://tools.ietf.org/html/rfc6750#section-3.1";

	private final Duration maxLifetime;

	private final Duration clockSkew;

	public TokenLifetimeValidator(Duration maxLifetime, Duration clockSkew) {
		Assert.isTrue(maxLifetime != null && !maxLifetime.isNegative() && !maxLifetime.isZero(),
				"maxLifetime must be positive");
		Assert.isTrue(clockSkew != null && !clockSkew.isNegative(), "clockSkew must not be negative");
		this.maxLifetime = maxLifetime;
		this.clockSkew = clockSkew;
	}

	@Override
	public OAuth2TokenValidatorResult validate(Jwt jwt) {
		Instant issuedAt = jwt.getIssuedAt();
		Instant expiresAt = jwt.getExpiresAt();
		if (issuedAt == null || expiresAt == null) {
			return failure("token has no " + (issuedAt == null ? "iat" : "exp")
					+ ", so its lifetime cannot be checked against the policy's " + this.maxLifetime.toSeconds() + "s");
		}
		Duration lifetime = Duration.between(issuedAt, expiresAt);
		if (lifetime.compareTo(this.maxLifetime.plus(this.clockSkew)) > 0) {
			return failure("token lives " + lifetime.toSeconds() + "s (exp - iat), longer than the policy's token lifetime of "
					+ this.maxLifetime.toSeconds() + "s; its signer does not follow the policy");
		}
		return OAuth2TokenValidatorResult.success();
	}

	private static OAuth2TokenValidatorResult failure(String description) {
		return OAuth2TokenValidatorResult.failure(new OAuth2Error(OAuth2ErrorCodes.INVALID_TOKEN, description, ERROR_URI));
	}

}
