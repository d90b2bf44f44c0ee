"""Python verifier for the conformance suite: PyJWT's ``PyJWKClient`` + ``jwt.decode``, as a
Python API verifies bearer tokens.

Protocol (stdin/stdout, one line each way): a JWT answers ``ok`` or ``fail: <reason>``;
``url <URL> [ALG]`` builds a fresh client for that JWKS URL (and expected algorithm) and answers
``ready``.

Flags (absent: PyJWT's defaults): --url, --alg (default RS256), --lifespan (JWK Set cache
seconds, default 300), --cooldown (unknown-kid refetch cooldown seconds, default 30),
--leeway (seconds, default 0), --audience (the ``aud`` to require; PyJWT refuses a token that
has one when it was not told which).

--jwks-file PATH instead of a URL: an HMAC policy's verification Secret as mounted (its
``jwks.json``), read with ``PyJWKSet`` and read again whenever the file changes (:class:`MountedJwkSet`,
the snippet README.md documents).
"""

from __future__ import annotations

import argparse
import os
import sys

import jwt
from jwt import PyJWKClient


class MountedJwkSet:
    """A JWK Set file, read again when it changes: the kubelet replaces a mounted Secret's
    files by swapping a symlink, so the file's identity (inode, mtime, size) changes with it."""

    def __init__(self, path: str):
        self.path, self.version, self.keys = path, None, {}

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        stat = os.stat(self.path)
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version != self.version:
            with open(self.path, encoding="utf-8") as file:
                self.keys = {key.key_id: key for key in jwt.PyJWKSet.from_json(file.read()).keys}
            self.version = version
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self.keys:
            raise jwt.PyJWKClientError(f"no key with kid {kid} in {self.path}")
        return self.keys[kid]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--alg", default="RS256")
    parser.add_argument("--lifespan", type=float)
    parser.add_argument("--cooldown", type=float)
    parser.add_argument("--leeway", type=float, default=0)
    parser.add_argument("--audience")
    parser.add_argument("--jwks-file")
    args = parser.parse_args()

    options = {}
    if args.lifespan is not None:
        options["lifespan"] = args.lifespan
    if args.cooldown is not None:
        options["cooldown_duration"] = args.cooldown

    client = PyJWKClient(args.url, **options) if args.url else MountedJwkSet(args.jwks_file) if args.jwks_file else None
    algorithm = args.alg
    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("url "):
            parts = line.split()
            try:
                client = PyJWKClient(parts[1], **options)
                algorithm = parts[2] if len(parts) > 2 else args.alg
                answer = "ready"
            except Exception as error:  # noqa: BLE001 - reported to the driver
                client, answer = None, f"fail: {type(error).__name__}: {error}"
        elif client is None:
            answer = "fail: no JWKS URL yet"
        else:
            try:
                key = client.get_signing_key_from_jwt(line)
                jwt.decode(line, key, algorithms=[algorithm], leeway=args.leeway, audience=args.audience,
                           options={"require": ["exp"]})
                answer = "ok"
            except Exception as error:  # noqa: BLE001 - reported to the driver
                answer = f"fail: {type(error).__name__}: {error}"
        sys.stdout.write(" ".join(answer.split()) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
