package dev.signingkeys.examples.revocation;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.text.ParseException;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.Date;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.locks.ReentrantLock;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import com.nimbusds.jose.util.JSONObjectUtils;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.JWTParser;

import org.springframework.http.HttpHeaders;
import org.springframework.http.HttpMethod;
import org.springframework.http.MediaType;
import org.springframework.http.RequestEntity;
import org.springframework.http.ResponseEntity;
import org.springframework.http.client.SimpleClientHttpRequestFactory;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.util.Assert;
import org.springframework.web.client.RestClientException;
import org.springframework.web.client.RestOperations;
import org.springframework.web.client.RestTemplate;

/**
 * The policy's revocation list, as the JWKS sidecar serves it at {@code /revocations.json}:
 * fetched, cached as long as its {@code Cache-Control: max-age} allows, revalidated with
 * {@code If-None-Match} (a {@code 304} keeps the cached copy), and never guessed.
 *
 * <p>The document ({@code signing_key_operator.core.revocations} writes it):
 * <pre>
 * {"backend":"configmap",
 *  "jti":{"&lt;jti&gt;":&lt;until&gt;, ...},
 *  "sub":{"&lt;subject&gt;":{"issuedBefore":&lt;t&gt;,"until":&lt;t&gt;}, ...}}
 * </pre>
 * A token is revoked when its {@code jti} is listed, or when its {@code sub} is listed and its
 * {@code iat} is before {@code issuedBefore} (a token of a listed subject without {@code iat}
 * is revoked: its age cannot be proven). {@code until} only says when the operator drops the
 * entry: no verifier accepts the token after it anyway.
 *
 * <p>Fails closed: {@link #revocationReason(Jwt)} throws
 * {@link RevocationListUnavailableException} rather than answer "not revoked" when the list
 * cannot be had: the sidecar unreachable or answering an error, a document that is not one, and
 * a document that says {@code "backend":"redis"} (its entries live in Redis, which this class
 * does not read; empty maps there do not mean "nothing revoked"). After a failure it retries at
 * the first check after {@link #setRetryAfterFailure retryAfterFailure} (1 s), refusing in
 * between, so a sidecar outage costs one request per second rather than one per token.
 *
 * <p>Thread-safe. One fetch at a time: while it runs, other threads that need a fresh copy wait
 * for it instead of fetching too.
 */
public final class RevocationList {

	/** Connect and read timeouts of the default {@link RestTemplate}. */
	public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(5);

	public static final Duration DEFAULT_RETRY_AFTER_FAILURE = Duration.ofSeconds(1);

	private static final Pattern MAX_AGE = Pattern.compile("(?:^|,)\\s*max-age\\s*=\\s*\"?(\\d+)\"?\\s*(?:,|$)",
			Pattern.CASE_INSENSITIVE);

	private static final Pattern NO_CACHE = Pattern.compile("(?:^|,)\\s*(?:no-cache|no-store)\\s*(?:[=,]|$)",
			Pattern.CASE_INSENSITIVE);

	private final URI uri;

	private final RestOperations rest;

	private final ReentrantLock fetching = new ReentrantLock();

	private Clock clock = Clock.systemUTC();

	private Duration retryAfterFailure = DEFAULT_RETRY_AFTER_FAILURE;

	/** A {@link Cached} copy or a {@link Failed} attempt; null before the first fetch. */
	private volatile Object state;

	/** Fetch with a {@link RestTemplate} with {@link #DEFAULT_TIMEOUT} connect and read timeouts. */
	public RevocationList(String uri) {
		this(URI.create(uri), defaultRestOperations());
	}

	/**
	 * Fetch with {@code rest}: the same {@link RestOperations} the application hands
	 * {@code NimbusJwtDecoder.withJwkSetUri(..).restOperations(..)}, for its timeouts, TLS and
	 * proxy settings. It must not follow its own cache: this class does the caching.
	 */
	public RevocationList(URI uri, RestOperations rest) {
		Assert.notNull(uri, "uri cannot be null");
		Assert.notNull(rest, "rest cannot be null");
		this.uri = uri;
		this.rest = rest;
	}

	private static RestOperations defaultRestOperations() {
		SimpleClientHttpRequestFactory factory = new SimpleClientHttpRequestFactory();
		factory.setConnectTimeout(DEFAULT_TIMEOUT);
		factory.setReadTimeout(DEFAULT_TIMEOUT);
		return new RestTemplate(factory);
	}

	public void setClock(Clock clock) {
		Assert.notNull(clock, "clock cannot be null");
		this.clock = clock;
	}

	/** How long to refuse after a failed fetch before trying again (default 1 s). */
	public void setRetryAfterFailure(Duration retryAfterFailure) {
		Assert.isTrue(retryAfterFailure != null && !retryAfterFailure.isNegative(),
				"retryAfterFailure must be zero or more");
		this.retryAfterFailure = retryAfterFailure;
	}

	public URI getUri() {
		return this.uri;
	}

	/**
	 * Why this (signature-verified) token is revoked, or {@code null} if it is not.
	 *
	 * <p>Reads {@code jti}, {@code sub} and {@code iat} from the token as issued
	 * ({@link Jwt#getTokenValue()}), not from the {@link Jwt}'s claims, which the decoder's
	 * claim set converter has mapped: Spring's default {@code MappedJwtClaimSetConverter} sets a
	 * missing {@code iat} to {@code exp} minus one second, which would pass a token without
	 * {@code iat} of a revoked subject as the newest possible one, and an application may map
	 * {@code sub} to its own user id, which the revocation does not name.
	 * @throws RevocationListUnavailableException when a current list cannot be had
	 */
	public String revocationReason(Jwt jwt) {
		JWTClaimsSet issued;
		try {
			issued = JWTParser.parse(jwt.getTokenValue()).getJWTClaimsSet();
		}
		catch (ParseException ex) {
			return "the token's claims cannot be read to check its revocation";
		}
		Document document = current();
		Date issuedAt = issued.getIssueTime();
		return document.revokes(issued.getJWTID(), issued.getSubject(), (issuedAt != null) ? issuedAt.toInstant() : null);
	}

	Document current() {
		Document document = usable(this.state, this.clock.instant());
		if (document != null) {
			return document;
		}
		this.fetching.lock();
		try {
			Object state = this.state;
			Instant now = this.clock.instant();
			document = usable(state, now); // another thread may have fetched meanwhile
			if (document != null) {
				return document;
			}
			Cached last = (state instanceof Cached cached) ? cached
					: (state instanceof Failed failed) ? failed.last() : null;
			try {
				Cached fetched = fetch(last, now);
				this.state = fetched;
				return fetched.document();
			}
			catch (RevocationListUnavailableException ex) {
				this.state = new Failed(ex, now.plus(this.retryAfterFailure), last);
				throw ex;
			}
		}
		finally {
			this.fetching.unlock();
		}
	}

	/** The cached document while fresh; throws the last failure until its retry time; else null. */
	private static Document usable(Object state, Instant now) {
		if (state instanceof Cached cached && now.isBefore(cached.freshUntil())) {
			return cached.document();
		}
		if (state instanceof Failed failed && now.isBefore(failed.retryAt())) {
			throw failed.error();
		}
		return null;
	}

	private Cached fetch(Cached last, Instant requested) {
		HttpHeaders headers = new HttpHeaders();
		headers.setAccept(List.of(MediaType.APPLICATION_JSON));
		if (last != null && last.etag() != null) {
			headers.setIfNoneMatch(last.etag());
		}
		ResponseEntity<byte[]> response;
		try {
			response = this.rest.exchange(new RequestEntity<>(headers, HttpMethod.GET, this.uri), byte[].class);
		}
		catch (RestClientException ex) {
			throw new RevocationListUnavailableException("cannot fetch " + this.uri + ": " + ex.getMessage(), ex);
		}
		// Freshness counts from when the request was sent (RFC 9111 4.2.3 would allow the
		// response time; the earlier moment is the safe side for a denylist).
		Instant freshUntil = freshUntil(response.getHeaders(), requested);
		String etag = response.getHeaders().getETag();
		if (response.getStatusCode().value() == 304) {
			if (last == null) {
				throw new RevocationListUnavailableException(this.uri + " answered 304 Not Modified to a request without If-None-Match");
			}
			return new Cached(last.document(), (etag != null) ? etag : last.etag(), freshUntil);
		}
		if (response.getStatusCode().value() != 200 || response.getBody() == null) {
			throw new RevocationListUnavailableException(this.uri + " answered " + response.getStatusCode() + " without a revocation document");
		}
		Document document = Document.parse(new String(response.getBody(), StandardCharsets.UTF_8), this.uri);
		return new Cached(document, etag, freshUntil);
	}

	/**
	 * {@code max-age} minus {@code Age} from {@code requested}; no max-age, {@code no-cache} or
	 * {@code no-store}: stale at once (revalidated at the next check). No heuristic freshness:
	 * a denylist kept longer than its publisher allows is a revocation not applied.
	 */
	static Instant freshUntil(HttpHeaders headers, Instant requested) {
		String cacheControl = String.join(",", headers.getOrEmpty(HttpHeaders.CACHE_CONTROL));
		if (NO_CACHE.matcher(cacheControl).find()) {
			return requested;
		}
		Matcher maxAge = MAX_AGE.matcher(cacheControl);
		if (!maxAge.find()) {
			return requested;
		}
		long seconds;
		try {
			seconds = Long.parseLong(maxAge.group(1));
		}
		catch (NumberFormatException ex) {
			return requested;
		}
		String age = headers.getFirst("Age");
		if (age != null && age.trim().matches("\\d{1,18}")) {
			seconds -= Long.parseLong(age.trim());
		}
		return (seconds > 0) ? requested.plusSeconds(seconds) : requested;
	}

	private record Cached(Document document, String etag, Instant freshUntil) {
	}

	private record Failed(RevocationListUnavailableException error, Instant retryAt, Cached last) {
	}

	/** One parsed revocation document. */
	record Document(String backend, Map<String, Long> jti, Map<String, Long> issuedBefore, URI source) {

		String revokes(String jti, String subject, Instant issuedAt) {
			if (!"configmap".equals(this.backend)) {
				throw new RevocationListUnavailableException(this.source + " says \"backend\":\"" + this.backend
						+ "\": the entries are in Redis, which this verifier does not read; refusing every token "
						+ "rather than taking the empty document for \"nothing revoked\"");
			}
			if (jti != null && this.jti.containsKey(jti)) {
				return "jti " + jti + " is revoked";
			}
			Long before = (subject != null) ? this.issuedBefore.get(subject) : null;
			if (before != null && (issuedAt == null || issuedAt.isBefore(Instant.ofEpochSecond(before)))) {
				return "tokens of subject " + subject + " issued before " + before + " are revoked";
			}
			return null;
		}

		/** Validates as strictly as the operator writes: anything else is not a revocation list. */
		static Document parse(String body, URI source) {
			Map<String, Object> object;
			try {
				object = JSONObjectUtils.parse(body);
			}
			catch (ParseException | RuntimeException ex) {
				throw invalid(source, "not a JSON object (" + ex.getMessage() + ")");
			}
			if (!Set.of("backend", "jti", "sub").containsAll(object.keySet())) {
				// A member this class does not know may change what is revoked: refuse, not ignore.
				throw invalid(source, "unknown members " + object.keySet());
			}
			Object backend = object.get("backend");
			if (!"configmap".equals(backend) && !"redis".equals(backend)) {
				throw invalid(source, "\"backend\" must be \"configmap\" or \"redis\"");
			}
			if (!(object.get("jti") instanceof Map<?, ?> jti) || !(object.get("sub") instanceof Map<?, ?> sub)) {
				throw invalid(source, "\"jti\" and \"sub\" must be objects");
			}
			Map<String, Long> jtis = new HashMap<>();
			for (Map.Entry<?, ?> entry : jti.entrySet()) {
				jtis.put((String) entry.getKey(), numericDate(entry.getValue(), source));
			}
			Map<String, Long> subjects = new HashMap<>();
			for (Map.Entry<?, ?> entry : sub.entrySet()) {
				if (!(entry.getValue() instanceof Map<?, ?> value) || !value.containsKey("issuedBefore")) {
					throw invalid(source, "every \"sub\" entry must be an object with \"issuedBefore\"");
				}
				subjects.put((String) entry.getKey(), numericDate(value.get("issuedBefore"), source));
			}
			if ("redis".equals(backend) && !(jtis.isEmpty() && subjects.isEmpty())) {
				throw invalid(source, "a \"redis\" document carries no entries");
			}
			return new Document((String) backend, Map.copyOf(jtis), Map.copyOf(subjects), source);
		}

		private static long numericDate(Object value, URI source) {
			if (value instanceof Long number && number >= 0) {
				return number;
			}
			throw invalid(source, "times must be NumericDate integers, got " + value);
		}

		private static RevocationListUnavailableException invalid(URI source, String why) {
			return new RevocationListUnavailableException(source + " is not a revocation document: " + why);
		}

	}

}
