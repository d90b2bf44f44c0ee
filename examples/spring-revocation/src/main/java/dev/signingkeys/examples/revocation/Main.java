package dev.signingkeys.examples.revocation;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

import jakarta.servlet.Filter;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;

import org.springframework.core.env.MapPropertySource;
import org.springframework.http.HttpHeaders;
import org.springframework.mock.web.MockFilterChain;
import org.springframework.mock.web.MockHttpServletRequest;
import org.springframework.mock.web.MockHttpServletResponse;
import org.springframework.mock.web.MockServletContext;
import org.springframework.web.context.support.AnnotationConfigWebApplicationContext;

/**
 * The example as a command the conformance test drives: starts {@link ResourceServerConfig} in a
 * web application context and sends each token through its {@code springSecurityFilterChain}
 * (the filter a servlet container would call) as {@code GET /api} with
 * {@code Authorization: Bearer <token>}.
 *
 * <pre>
 * java -jar spring-revocation.jar --jwks-url URL --revocations-url URL [--alg ES256] [--issuer ISS]
 *                                  [--max-token-lifetime-seconds N]
 * </pre>
 *
 * Protocol (stdin/stdout, one line each way, like tests/conformance/verifiers/java): a JWT
 * answers {@code {"ok":true,"status":200}}, or {@code {"ok":false,"status":N,"error":"..."}}
 * where the error is the {@code WWW-Authenticate} header of a 401, or the exception that a
 * servlet container would turn into a 500.
 */
public final class Main {

	private Main() {
	}

	/** The protected application behind the filter chain. */
	private static final class Api extends HttpServlet {

		@Override
		protected void service(HttpServletRequest request, HttpServletResponse response) throws IOException {
			response.setStatus(200);
			response.getWriter().write("hello " + request.getUserPrincipal().getName());
		}

	}

	static String json(boolean ok, int status, String error) {
		StringBuilder text = new StringBuilder("{\"ok\":").append(ok).append(",\"status\":").append(status);
		if (error != null) {
			text.append(",\"error\":\"");
			for (char c : error.toCharArray()) {
				switch (c) {
					case '"' -> text.append("\\\"");
					case '\\' -> text.append("\\\\");
					default -> {
						if (c < 0x20) {
							text.append(String.format("\\u%04x", (int) c));
						}
						else {
							text.append(c);
						}
					}
				}
			}
			text.append('"');
		}
		return text.append('}').toString();
	}

	private static String oneLine(Throwable error) {
		StringBuilder text = new StringBuilder(error.getClass().getSimpleName()).append(": ").append(error.getMessage());
		Throwable cause = error.getCause();
		if (cause != null && cause != error) {
			text.append(" (caused by ").append(cause.getClass().getSimpleName()).append(": ").append(cause.getMessage()).append(")");
		}
		return text.toString().replaceAll("\\s+", " ");
	}

	static String handle(Filter securityFilterChain, MockServletContext servletContext, String token) {
		MockHttpServletRequest request = new MockHttpServletRequest(servletContext, "GET", "/api");
		request.addHeader(HttpHeaders.AUTHORIZATION, "Bearer " + token);
		MockHttpServletResponse response = new MockHttpServletResponse();
		try {
			securityFilterChain.doFilter(request, response, new MockFilterChain(new Api()));
		}
		catch (Exception ex) {
			// What the container would answer with a 500.
			return json(false, 500, oneLine(ex));
		}
		int status = response.getStatus();
		if (status == 200) {
			return json(true, status, null);
		}
		String challenge = response.getHeader(HttpHeaders.WWW_AUTHENTICATE);
		return json(false, status, (challenge != null) ? challenge : "HTTP " + status);
	}

	public static void main(String[] args) throws Exception {
		Map<String, Object> properties = new HashMap<>();
		for (int i = 0; i + 1 < args.length; i += 2) {
			String name = switch (args[i]) {
				case "--jwks-url" -> "signingkeys.jwks-url";
				case "--revocations-url" -> "signingkeys.revocations-url";
				case "--alg" -> "signingkeys.jws-algorithm";
				case "--issuer" -> "signingkeys.issuer";
				case "--max-token-lifetime-seconds" -> "signingkeys.max-token-lifetime-seconds";
				default -> null;
			};
			if (name == null) {
				break;
			}
			properties.put(name, args[i + 1]);
		}
		if (args.length % 2 != 0 || properties.size() * 2 != args.length || !properties.containsKey("signingkeys.jwks-url")
				|| !properties.containsKey("signingkeys.revocations-url")) {
			System.err.println("usage: java -jar spring-revocation.jar --jwks-url URL --revocations-url URL [--alg ALG] [--issuer ISSUER] "
					+ "[--max-token-lifetime-seconds N]");
			System.exit(2);
		}

		MockServletContext servletContext = new MockServletContext();
		AnnotationConfigWebApplicationContext context = new AnnotationConfigWebApplicationContext();
		context.setServletContext(servletContext);
		context.getEnvironment().getPropertySources().addFirst(new MapPropertySource("command line", properties));
		context.register(ResourceServerConfig.class);
		context.refresh();
		Filter securityFilterChain = context.getBean("springSecurityFilterChain", Filter.class);

		PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
		BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
		String line;
		while ((line = in.readLine()) != null) {
			line = line.trim();
			if (!line.isEmpty()) {
				out.println(handle(securityFilterChain, servletContext, line));
			}
		}
		context.close();
	}

}
