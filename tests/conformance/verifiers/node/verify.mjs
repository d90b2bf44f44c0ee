// Node verifier for the conformance suite: `jose` createRemoteJWKSet + jwtVerify, as a Node
// API verifies bearer tokens.
//
// Protocol (stdin/stdout, one line each way): a JWT answers "ok" or "fail: <reason>";
// "url <URL> [ALG]" builds a fresh remote JWK Set for that URL and answers "ready" (jose
// takes the algorithm from the key, so ALG is ignored).
//
// Flags (absent: jose's defaults): --url URL, --cache-max-age-ms (default 600000 = 10 min),
// --cooldown-ms (default 30000 = 30 s), --leeway-s (clockTolerance, default 0).
//
// --jwks-file PATH instead of a URL: an HMAC policy's verification Secret as mounted (its
// jwks.json), read again whenever the file changes (mountedJwkSet below, the snippet README.md
// documents). jose's createLocalJWKSet refuses symmetric algorithms, so the key is looked up by
// kid and imported with importJWK, for the one algorithm the key names.
import { readFileSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createRemoteJWKSet, errors, importJWK, jwtVerify } from 'jose';

// The kubelet replaces a mounted Secret's files by swapping a symlink: the file's identity
// (inode, mtime, size) changes with it, and then the set is read again.
function mountedJwkSet(path) {
  let version, byKid = new Map();
  return async (protectedHeader) => {
    const stat = statSync(path);
    const now = `${stat.ino}:${stat.mtimeMs}:${stat.size}`;
    if (now !== version) {
      byKid = new Map(JSON.parse(readFileSync(path, 'utf8')).keys.map((jwk) => [jwk.kid, jwk]));
      version = now;
    }
    const jwk = byKid.get(protectedHeader.kid);
    if (!jwk || jwk.alg !== protectedHeader.alg) throw new errors.JWKSNoMatchingKey();
    return importJWK(jwk, jwk.alg);
  };
}

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    'cache-max-age-ms': { type: 'string' },
    'cooldown-ms': { type: 'string' },
    'leeway-s': { type: 'string' },
    'jwks-file': { type: 'string' },
  },
});

const remoteOptions = {};
if (values['cache-max-age-ms'] !== undefined) remoteOptions.cacheMaxAge = Number(values['cache-max-age-ms']);
if (values['cooldown-ms'] !== undefined) remoteOptions.cooldownDuration = Number(values['cooldown-ms']);
const verifyOptions = { requiredClaims: ['exp'] };
if (values['leeway-s'] !== undefined) verifyOptions.clockTolerance = Number(values['leeway-s']);

let jwks = values.url ? createRemoteJWKSet(new URL(values.url), remoteOptions)
  : values['jwks-file'] ? mountedJwkSet(values['jwks-file']) : undefined;

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
