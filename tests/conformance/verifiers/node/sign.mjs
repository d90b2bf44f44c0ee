// Signing with a SigningKeyPolicy's active key in Node (jose), from the mounted signing Secret:
// what signing_key_operator.sign does in Python. The docs point here (examples/signers/README.md)
// and the conformance suite runs it (test_signer_snippets.py), so the snippet is tested code.
//
// The signing Secret mounted at DIR holds kid, alg, private.pem and lifetimes.json. The kubelet
// updates it by swapping the ..data symlink, so the key and the lifetime are read again whenever
// ..data points elsewhere: a new key or lifetime reaches the signer without a restart. Every
// token gets kid, iat, exp = iat + the policy's lifetime (or a class's; shorter may be asked
// for, never longer) and a random jti.
//
// As a command (the suite's protocol, one line each way): `node sign.mjs --dir DIR`, then a
// JSON line {"claims": {...}, "class": "admin", "lifetime": 60} answers a token or "fail: <reason>".
import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { importPKCS8, SignJWT } from 'jose';

const FILES = ['kid', 'alg', 'private.pem', 'lifetimes.json'];
const RESERVED = ['iat', 'exp', 'jti'];

export class MountedSigner {
  constructor(dir) {
    this.dir = dir;
    this.version = undefined;
    this.current = undefined;
    this.lastError = undefined;
  }

  // ..data's target names the version; a plain directory is compared by its files' stat.
  readVersion() {
    try {
      return { data: readlinkSync(join(this.dir, '..data')) };
    } catch {
      return { stat: FILES.map((name) => { try { const s = statSync(join(this.dir, name)); return `${s.ino}:${s.mtimeMs}:${s.size}`; } catch { return '-'; } }).join(',') };
    }
  }

  async load(version) {
    const base = version.data ? join(this.dir, version.data) : this.dir;
    const read = (name) => readFileSync(join(base, name), 'utf8');
    const lifetimes = JSON.parse(read('lifetimes.json'));
    if (!Number.isInteger(lifetimes.tokenLifetimeSeconds) || lifetimes.tokenLifetimeSeconds <= 0) {
      throw new Error('lifetimes.json: tokenLifetimeSeconds must be a whole number of seconds, more than 0');
    }
    const alg = read('alg').trim();
    return { kid: read('kid').trim(), alg, key: await importPKCS8(read('private.pem'), alg), lifetimes };
  }

  async key() {
    const version = this.readVersion();
    const name = JSON.stringify(version);
    if (name !== this.version) {
      this.version = name; // an unusable version is reported once, not read again per token
      try {
        this.current = await this.load(version);
        this.lastError = undefined;
      } catch (error) {
        this.lastError = `the signing Secret is unusable: ${error.message}`; // never the key itself
      }
    }
    if (!this.current) throw new Error(this.lastError ?? 'no signing Secret read yet');
    return this.current;
  }

  async sign(claims, { lifetimeClass, lifetime } = {}) {
    const reserved = RESERVED.filter((name) => name in claims);
    if (reserved.length) throw new Error(`claims ${reserved.join(', ')} are set by the signer`);
    const { kid, alg, key, lifetimes } = await this.key();
    const allowed = lifetimeClass === undefined ? lifetimes.tokenLifetimeSeconds : lifetimes.classes?.[lifetimeClass];
    if (allowed === undefined) throw new Error(`the policy has no token lifetime class "${lifetimeClass}"`);
    if (lifetime !== undefined && !(lifetime > 0 && lifetime <= allowed)) {
      throw new Error(`asked for a ${lifetime}s token; the policy allows at most ${allowed}s`);
    }
    const seconds = lifetime === undefined ? allowed : Math.max(1, Math.floor(lifetime));
    const iat = Math.floor(Date.now() / 1000);
    return new SignJWT(claims)
      .setProtectedHeader({ alg, kid, typ: 'JWT' })
      .setIssuedAt(iat)
      .setExpirationTime(iat + seconds)
      .setJti(randomBytes(16).toString('base64url'))
      .sign(key);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { dir: { type: 'string' } } });
  if (!values.dir) {
    console.error('usage: node sign.mjs --dir DIR');
    process.exit(2);
  }
  const signer = new MountedSigner(values.dir);
  for await (const raw of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!raw.trim()) continue;
    let answer;
    try {
      const request = JSON.parse(raw);
      answer = await signer.sign(request.claims ?? {}, { lifetimeClass: request.class, lifetime: request.lifetime });
    } catch (error) {
      answer = `fail: ${error.message}`.replace(/\s+/g, ' ');
    }
    process.stdout.write(`${answer}\n`);
  }
}
