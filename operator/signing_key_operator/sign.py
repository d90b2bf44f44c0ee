"""A JWT signer for services that sign with a SigningKeyPolicy's active key.

    signer = Signer.from_directory("/var/run/signing-key")      # the signing Secret, mounted
    token = signer.sign({"sub": "alice", "aud": "orders"})      # the policy's tokenLifetime
    token = signer.sign({"sub": "root"}, lifetime_class="admin")  # a shorter class of the policy

Why a library: the operator keeps a key published for tokenLifetime after it stopped signing,
so a token that lives longer than the policy says fails verification once its key is gone. The
lifetime therefore comes from the policy (``lifetimes.json`` in the signing Secret), never from
the application's own configuration: a caller may ask for a shorter lifetime, and one that asks
for a longer one gets :class:`~.core.lifetimes.LifetimeRefused`, not a longer token. Every token
gets ``kid`` (the verifiers pick the key by it), ``iat``, ``exp`` and a random ``jti`` (so that
any one token can be revoked with a TokenRevocation).

Why it reads the Secret on every call: the kubelet replaces a mounted Secret's files by
swapping the ``..data`` symlink, and the operator only moves the signing Secret to a key that
verifiers have had for publishAhead. A signer that kept an old key in memory would go on
signing with a key that is retired and, later, removed. Checking costs one ``readlink`` per
token (the ``..data`` target names the version); the files are parsed again only when it moves,
and read through that one target, so a swap in the middle of a read cannot mix two versions.
A directory without ``..data`` (a copy, a test) is compared by its files' stat instead. Through
the API (:meth:`Signer.from_secret`), the Secret is read again every ``refresh_seconds``.

A version that cannot be read (half-written, a lifetimes.json this version does not know, a key
that does not match its kid) is never signed with: the signer keeps the last good version and
:attr:`Signer.last_error` says why, or raises :class:`SigningUnavailable` if it never had one.
Messages never hold key material.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey, import_key

from .core.algorithm_registry import ExactAlgorithmRegistry
from .core.keys import KeyMaterialError, is_hmac_algorithm, load_key
from .core.lifetimes import InvalidLifetimes, LifetimeRefused, TokenLifetimes

__all__ = ["LifetimeRefused", "Signer", "SigningKey", "SigningUnavailable"]

SECRET_FILES = ("kid", "alg", "private.pem", "key", "lifetimes.json")
"""What a signer reads from the signing Secret (its data keys, so its file names when mounted):
the key is ``private.pem`` for a public-key algorithm, ``key`` (the raw bytes) for HS*."""
RESERVED_CLAIMS = ("iat", "exp", "jti")
"""Set by the signer on every token; a caller passing one is refused, so there is one way."""
_KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA", "Ed": "OKP"}


class SigningUnavailable(Exception):
    """No usable version of the signing Secret has been read; ``str()`` says why."""


@dataclass(frozen=True)
class SigningKey:
    """One version of the signing Secret, checked: the key fits its alg and kid."""

    kid: str
    alg: str
    lifetimes: TokenLifetimes
    key: Any = field(repr=False)
    """The joserfc private key. Secret!"""

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> SigningKey:
        """A version from the Secret's data (decoded); :class:`SigningUnavailable` if unusable."""
        try:
            alg = files["alg"].decode().strip() if "alg" in files else ""
        except UnicodeDecodeError:
            raise SigningUnavailable("the signing Secret's kid or alg is not text") from None
        key_file = "key" if is_hmac_algorithm(alg) else "private.pem"
        missing = [name for name in ("kid", "alg", key_file, "lifetimes.json") if name not in files]
        if missing:
            raise SigningUnavailable(f"the signing Secret has no {', '.join(missing)} "
                                     "(lifetimes.json needs an operator that writes it)")
        try:
            kid = files["kid"].decode().strip()
            material = load_key(files[key_file], alg, expected_kid=kid)
            lifetimes = TokenLifetimes.parse(files["lifetimes.json"])
        except UnicodeDecodeError:
            raise SigningUnavailable("the signing Secret's kid or alg is not text") from None
        except (KeyMaterialError, InvalidLifetimes) as error:
            raise SigningUnavailable(f"the signing Secret is unusable: {error}") from None
        if material.is_shared_secret:
            key = OctKey.import_key(material.private)
        else:
            key = import_key(material.private.decode(), _KEY_TYPE[alg[:2]])
        return cls(material.kid, alg, lifetimes, key)


class Signer:
    """Signs JWTs with the active key of a policy; one Signer is meant to be shared by threads."""

    def __init__(self, read_version: Callable[[], object], read_files: Callable[[object], Mapping[str, bytes]], *,
                 clock: Callable[[], float] = time.time) -> None:
        """Prefer :meth:`from_directory` or :meth:`from_secret`. ``read_version`` names the
        version there is now (cheap, called per token); ``read_files`` reads that version."""
        self._read_version, self._read_files = read_version, read_files
        self.clock = clock
        """Seconds since the epoch; injectable for tests."""
        self._lock = threading.Lock()
        self._version: object = None
        self._current: SigningKey | None = None
        self.last_error: str | None = None
        """Why the newest version could not be used (the signer keeps the last good one), or None."""

    @classmethod
    def from_directory(cls, path: str | os.PathLike, *, clock: Callable[[], float] = time.time) -> Signer:
        """The signing Secret mounted as a volume in the signing pod (a ``secret`` volume of
        ``<policy>-signing``, or the policy's ``signingSecretName``)."""
        directory = Path(path)
        return cls(lambda: _directory_version(directory), lambda version: _read_directory(directory, version),
                   clock=clock)

    @classmethod
    def from_secret(cls, namespace: str, name: str, *, api_client: Any = None, refresh_seconds: float = 10.0,
                    clock: Callable[[], float] = time.time) -> Signer:
        """The signing Secret read through the API (needs ``get`` on it), again at most every
        ``refresh_seconds``: 10 s, well inside the operator's secretPropagation (what it allows
        a mount to lag), and one request per signer per 10 s whatever the token rate."""
        import urllib3
        from kubernetes import client as k8s  # only this source needs the client

        core = k8s.CoreV1Api(api_client)
        fetched: dict[str, Any] = {}

        def version() -> object:
            now = time.monotonic()
            if "at" not in fetched or now - fetched["at"] >= refresh_seconds:
                try:
                    secret = core.read_namespaced_secret(name, namespace)
                except k8s.ApiException as error:
                    fetched["at"] = now
                    raise SigningUnavailable(f"Secret {namespace}/{name} could not be read: HTTP {error.status}") from None
                except (OSError, urllib3.exceptions.HTTPError) as error:  # unreachable API server
                    fetched["at"] = now
                    raise SigningUnavailable(f"Secret {namespace}/{name} could not be read ({type(error).__name__})") from None
                fetched.update(at=now, secret=secret)
            return fetched["secret"].metadata.resource_version

        def files(_version: object) -> Mapping[str, bytes]:
            return {key: base64.b64decode(value) for key, value in (fetched["secret"].data or {}).items()}

        return cls(version, files, clock=clock)

    def current(self) -> SigningKey:
        """The version to sign with now (reading a newer one first, if there is one)."""
        with self._lock:
            try:
                for _attempt in range(3):
                    version = self._read_version()
                    if version == self._version:
                        break
                    try:
                        files = self._read_files(version)
                    except _VersionMoved:
                        continue  # the kubelet swapped it in the meantime: read the new one
                    # Recorded before it is parsed: an unusable version is reported once, not
                    # parsed again for every token (an RSA key takes 0.1 s or more to check).
                    self._version = version
                    self._current = SigningKey.from_files(files)
                    self.last_error = None
                    break
                else:
                    self.last_error = "the signing Secret kept changing while it was read"
            except SigningUnavailable as error:
                self.last_error = str(error)
            except OSError as error:
                self.last_error = f"the signing Secret could not be read ({type(error).__name__}: {error.strerror})"
            if self._current is None:
                raise SigningUnavailable(self.last_error or "no version of the signing Secret has been read")
            return self._current

    def sign(self, claims: Mapping[str, Any], *, lifetime: float | timedelta | None = None,
             lifetime_class: str | None = None) -> str:
        """A compact JWS of ``claims`` plus ``iat``, ``exp`` and a random ``jti``, with ``kid``
        in its header. ``lifetime`` (seconds) may shorten the lifetime the policy (or its
        ``lifetime_class``) gives; longer raises :class:`LifetimeRefused`."""
        reserved = [name for name in RESERVED_CLAIMS if name in claims]
        if reserved:
            raise ValueError(f"claims {', '.join(reserved)} are set by the signer (ask for a lifetime= instead of an exp)")
        if isinstance(lifetime, timedelta):
            lifetime = lifetime.total_seconds()
        key = self.current()
        seconds = key.lifetimes.lifetime(lifetime_class, lifetime)
        issued_at = int(self.clock())  # rounded down, so exp - iat is exactly the lifetime and exp never later
        payload = {**claims, "iat": issued_at, "exp": issued_at + seconds, "jti": secrets.token_urlsafe(16)}
        return jwt.encode({"alg": key.alg, "kid": key.kid, "typ": "JWT"}, payload, key.key,
                          algorithms=[key.alg], registry=ExactAlgorithmRegistry(algorithms=[key.alg]))


class _VersionMoved(Exception):
    """The version read was replaced (and removed) while its files were read."""


def _directory_version(directory: Path) -> object:
    try:
        return ("..data", os.readlink(directory / "..data"))
    except OSError:  # no ..data symlink: a plain directory
        pass
    if not directory.is_dir():
        raise SigningUnavailable(f"{directory} is not a directory (is the signing Secret mounted there?)")
    stats = []
    for name in SECRET_FILES:
        try:
            stat = os.stat(directory / name)
        except FileNotFoundError:
            stats.append(None)
            continue
        stats.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return ("files", tuple(stats))


def _read_directory(directory: Path, version: object) -> Mapping[str, bytes]:
    kind, detail = version  # type: ignore[misc]
    base = directory / detail if kind == "..data" else directory
    files = {}
    for name in SECRET_FILES:
        try:
            files[name] = (base / name).read_bytes()
        except FileNotFoundError:
            if kind == "..data" and not base.exists():
                raise _VersionMoved() from None
    return files
