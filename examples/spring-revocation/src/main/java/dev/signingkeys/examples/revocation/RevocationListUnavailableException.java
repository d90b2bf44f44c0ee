package dev.signingkeys.examples.revocation;

import org.springframework.security.oauth2.jwt.JwtException;

/**
 * No current revocation list: the token can be neither accepted nor called revoked.
 *
 * <p>A {@link JwtException} but not a {@code BadJwtException}, like the one
 * {@code NimbusJwtDecoder} throws when the JWK Set cannot be fetched: Spring Security's
 * {@code JwtAuthenticationProvider} turns it into an {@code AuthenticationServiceException}, which
 * {@code BearerTokenAuthenticationFilter} rethrows (a 500, the server's fault) rather than answer
 * 401 {@code invalid_token} (the client's fault, which tells a client to throw its token away).
 */
public class RevocationListUnavailableException extends JwtException {

	public RevocationListUnavailableException(String message) {
		super(message);
	}

	public RevocationListUnavailableException(String message, Throwable cause) {
		super(message, cause);
	}

}
