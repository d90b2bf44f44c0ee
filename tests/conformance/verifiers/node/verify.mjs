// Node verifier for the conformance suite: `jose` createRemoteJWKSet + jwtVerify, as a Node
// API verifies bearer tokens.
//
// Protocol (stdin/stdout, one line each way): a JWT answers "ok" or "fail: <reason>";
// "url <URL> [ALG]" builds a fresh remote JWK Set for that URL and answers "ready" (jose
// takes the algorithm from the key, so ALG is ignored).
//
// Flags (absent: jose's defaults): --url URL, --cache-max-age-ms (default 600000 = 10 min),
// --cooldown-ms (default 30000 = 30 s), --leeway-s (clockTolerance, default 0).
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    'cache-max-age-ms': { type: 'string' },
    'cooldown-ms': { type: 'string' },
    'leeway-s': { type: 'string' },
  },
});

const remoteOptions = {};
if (values['cache-max-age-ms'] !== undefined) remoteOptions.cacheMaxAge = Number(values['cache-max-age-ms']);
if (values['cooldown-ms'] !== undefined) remoteOptions.cooldownDuration = Number(values['cooldown-ms']);
const verifyOptions = { requiredClaims: ['exp'] };
if (values['leeway-s'] !== undefined) verifyOptions.clockTolerance = Number(values['leeway-s']);

let jwks = values.url ? createRemoteJWKSet(new URL(values.url), remoteOptions) : undefined;

const oneLine = (error) => `${error.code ?? error.name}: ${error.message}`.replace(/\s+/g, ' ');

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const raw of lines) {
  const line = raw.trim();
  if (!line) continue;
  let answer;
  if (line.startsWith('url ')) {
    try {
      jwks = createRemoteJWKSet(new URL(line.split(/\s+/)[1]), remoteOptions);
      answer = 'ready';
    } catch (error) {
      jwks = undefined;
      answer = `fail: ${oneLine(error)}`;
    }
  } else if (!jwks) {
    answer = 'fail: no JWKS URL yet';
  } else {
    try {
      await jwtVerify(line, jwks, verifyOptions);
      answer = 'ok';
    } catch (error) {
      answer = `fail: ${oneLine(error)}`;
    }
  }
  process.stdout.write(`${answer}\n`);
}
