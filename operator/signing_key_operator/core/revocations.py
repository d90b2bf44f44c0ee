"""Token revocation: TokenRevocation specs in, the denylist verifiers read out.

Pure code: no I/O, and no kopf, kubernetes or aiohttp imports. The operator parses each
TokenRevocation with :func:`parse_revocation`, compiles those of a policy with
:func:`compile_revocations` (clock passed in) and publishes :attr:`Compiled.document`; the
sidecar checks what it serves with :func:`parse_revocation_document`; verifiers (the Python
``signing_key_operator.verify`` and the Spring example) ask :meth:`RevocationDocument.revokes`
or read the Redis keys named by :class:`RedisLayout`.

An entry stays in force until no verifier could accept the token any more, like a cache entry
with a TTL:

* by ``jti``: until the token's ``exp`` plus the policy's clockSkew;
* by ``subject``: every token of that ``sub`` with ``iat`` before ``issuedBefore``; until
  issuedBefore plus tokenLifetime plus clockSkew (the last such token expires by then).

Document (``revocations.json``), canonical like the JWK Set (sorted members, compact, ASCII, one
trailing newline), times in NumericDate seconds as in JWTs::

    {"backend":"configmap",
     "jti":{"<jti>":<until>, ...},
     "sub":{"<subject>":{"issuedBefore":<t>,"until":<t>}, ...}}

Several revocations of one subject merge into the widest (latest issuedBefore, latest until);
of one jti, into the latest until. With ``"backend":"redis"`` the maps are empty and the
entries live in Redis (:class:`RedisLayout`); a verifier reading such a document must switch to
Redis rather than take the empty maps as "nothing revoked".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from .jwks import loads_strict
from .spec import SpecError

__all__ = [
    "Compiled",
    "InvalidRevocationDocument",
    "JTI_PATTERN",
    "MAX_CONFIGMAP_BYTES",
    "RedisLayout",
    "Revocation",
    "RevocationDocument",
    "RevocationError",
    "SubjectEntry",
    "compile_revocations",
    "parse_revocation",
    "parse_revocation_document",
]

MAX_CONFIGMAP_BYTES = 1024 * 1024
"""The API server refuses a ConfigMap whose data values add up to more than 1 MiB."""

JTI_PATTERN = re.compile(r"\A[\x21-\x7e]{1,256}\Z")
"""Printable ASCII without spaces, 1 to 256 characters: what issuers put in ``jti`` (UUIDs,
random base64url, ULIDs). The same rule is in the CRD, so a malformed jti never gets this far
through the API; the operator checks again for objects stored before the rule existed."""

MAX_SUBJECT_LENGTH = 256


class RevocationError(SpecError):
    """A TokenRevocation field is invalid; ``str()`` names the field (``spec.jti: ...``)."""


class InvalidRevocationDocument(ValueError):
    """Content that must not be served as a revocation document (``reason``: a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Revocation:
    """One TokenRevocation, validated. Exactly one of (jti, expires_at) / (subject, issued_before)."""

    name: str
    policy_name: str
    jti: str | None = None
    expires_at: datetime | None = None
    subject: str | None = None
    issued_before: datetime | None = None
    reason: str = ""
    created: datetime | None = None
    """When the TokenRevocation was created: when a document is full, the oldest stay in it."""

    def until(self, token_lifetime: timedelta, clock_skew: timedelta) -> datetime:
        """When the entry stops mattering: no verifier accepts the token(s) after this."""
        if self.jti is not None:
            assert self.expires_at is not None
            return self.expires_at + clock_skew
        assert self.issued_before is not None
        return self.issued_before + token_lifetime + clock_skew

    @property
    def what(self) -> str:
        """For messages: ``jti abc`` or ``subject alice (issued before 2026-...)``."""
        if self.jti is not None:
            return f"jti {self.jti}"
        return f"subject {self.subject} (tokens issued before {_iso(self.issued_before)})"


def parse_revocation(name: str, spec: Mapping[str, Any] | None, created: datetime | None = None) -> Revocation:
    """Parse a TokenRevocation's ``spec``; errors name the field as the CRD rules do."""
    if not isinstance(spec, Mapping):
        raise RevocationError("spec", "must be an object")
    policy = spec.get("policyName")
    if not isinstance(policy, str) or not policy:
        raise RevocationError("spec.policyName", "is required: the SigningKeyPolicy whose tokens to revoke")
    reason = spec.get("reason") or ""
    if not isinstance(reason, str):
        raise RevocationError("spec.reason", "must be a string")
    jti, subject = spec.get("jti"), spec.get("subject")
    if (jti is None) == (subject is None):
        raise RevocationError("spec", "set exactly one of jti (with expiresAt) or subject (with issuedBefore)")
    if jti is not None:
        if not isinstance(jti, str) or not JTI_PATTERN.match(jti):
            raise RevocationError("spec.jti", "must be 1 to 256 printable ASCII characters without spaces")
        expires_at = _time("spec.expiresAt", spec.get("expiresAt"), "the token's exp claim, so the entry can expire with it")
        return Revocation(name, policy, jti=jti, expires_at=expires_at, reason=reason, created=created)
    if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise RevocationError("spec.subject", f"must be a string of 1 to {MAX_SUBJECT_LENGTH} characters")
    issued_before = _time("spec.issuedBefore", spec.get("issuedBefore"), "tokens of the subject issued before this moment are revoked")
    return Revocation(name, policy, subject=subject, issued_before=issued_before, reason=reason, created=created)


@dataclass(frozen=True)
class SubjectEntry:
    issued_before: int
    until: int


@dataclass(frozen=True)
class RevocationDocument:
    """The denylist as served (``revocations.json``). Times are NumericDate seconds."""

    jti: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    sub: Mapping[str, SubjectEntry] = field(default_factory=lambda: MappingProxyType({}))
    backend: str = "configmap"

    def __len__(self) -> int:
        return len(self.jti) + len(self.sub)

    def revokes(self, claims: Mapping[str, Any]) -> str | None:
        """Why these (already verified) claims are revoked, or None. A token of a revoked
        subject without a usable ``iat`` is revoked: its age cannot be proven."""
        jti = claims.get("jti")
        if isinstance(jti, str) and jti in self.jti:
            return f"jti {jti} is revoked"
        subject = claims.get("sub")
        if isinstance(subject, str):
            entry = self.sub.get(subject)
            if entry is not None:
                issued = claims.get("iat")
                if not isinstance(issued, (int, float)) or isinstance(issued, bool) or issued < entry.issued_before:
                    return f"tokens of subject {subject} issued before {entry.issued_before} are revoked"
        return None

    def render(self) -> bytes:
        doc = {
            "backend": self.backend,
            "jti": dict(self.jti),
            "sub": {s: {"issuedBefore": e.issued_before, "until": e.until} for s, e in self.sub.items()},
        }
        return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def parse_revocation_document(data: bytes | str) -> RevocationDocument:
    """Validate served or fetched content; refuse anything the operator could not have written.

    The sidecar serves the checked bytes as they are, so every member is on an allow-list (the
    three top-level members; a NumericDate per jti; exactly issuedBefore and until per subject)
    and the bytes must be UTF-8 without a byte order mark, as :meth:`RevocationDocument.render`
    writes them (``json.loads`` would also take UTF-16 or UTF-32, which other verifiers do not).
    """
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_CONFIGMAP_BYTES:
        raise InvalidRevocationDocument("too_large", f"{len(data)} bytes, more than a ConfigMap can hold")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRevocationDocument("not_utf8", f"not UTF-8 (byte offset {error.start})") from None
    try:
        obj = loads_strict(text)
    except (ValueError, RecursionError) as error:
        raise InvalidRevocationDocument("not_json", f"not a JSON document ({type(error).__name__})") from None
    if not isinstance(obj, dict):
        raise InvalidRevocationDocument("not_an_object", "the document must be a JSON object")
    backend = obj.get("backend")
    if backend not in ("configmap", "redis"):
        raise InvalidRevocationDocument("bad_backend", "backend must be \"configmap\" or \"redis\"")
    jti, sub = obj.get("jti"), obj.get("sub")
    if not isinstance(jti, dict) or not isinstance(sub, dict):
        raise InvalidRevocationDocument("missing_members", "jti and sub must be objects")
    extra = set(obj) - {"backend", "jti", "sub"}
    if extra:
        raise InvalidRevocationDocument("unknown_members", f"unknown members: {', '.join(sorted(extra))}")
    for key, until in jti.items():
        if not JTI_PATTERN.match(key) or not _numeric_date(until):
            raise InvalidRevocationDocument("bad_entry", "every jti entry maps a valid jti to a NumericDate")
    subjects = {}
    for key, entry in sub.items():
        if (
            not key or len(key) > MAX_SUBJECT_LENGTH or not isinstance(entry, dict) or set(entry) != {"issuedBefore", "until"}
            or not _numeric_date(entry["issuedBefore"]) or not _numeric_date(entry["until"])
        ):
            raise InvalidRevocationDocument("bad_entry", "every sub entry maps a subject to {issuedBefore, until}")
        subjects[key] = SubjectEntry(entry["issuedBefore"], entry["until"])
    if backend == "redis" and (jti or sub):
        raise InvalidRevocationDocument("bad_backend", "a redis-backed document carries no entries")
    return RevocationDocument(MappingProxyType(dict(jti)), MappingProxyType(subjects), backend)


@dataclass(frozen=True)
class Compiled:
    """What the revocations of one policy amount to at ``now``."""

    in_force: tuple[tuple[Revocation, datetime], ...]
    """Entries still needed, with their end (``until``)."""
    expired: tuple[tuple[Revocation, datetime], ...]
    """Entries past their end: pruned from the document (and from Redis by its TTL)."""
    document: RevocationDocument
    """The denylist of the entries in force (empty maps for the Redis backend); with a size
    limit, of the oldest entries that fit."""
    entries: RevocationDocument
    """The same entries whatever the backend: what is mirrored into Redis."""
    next_expiry: datetime | None
    """When the next entry ends: the operator wakes then to prune it."""
    left_out: tuple[Revocation, ...] = ()
    """Entries in force that did not fit in ``document`` (the newest ones)."""


def compile_revocations(
    revocations: Iterable[Revocation], *, token_lifetime: timedelta, clock_skew: timedelta, now: datetime,
    backend: str = "ConfigMap", max_document_bytes: int | None = None,
) -> Compiled:
    """``max_document_bytes``: with the ConfigMap backend, the document holds the oldest entries
    (by creation) that fit and the rest are ``left_out``: a full document still protects
    against everything it can, and says exactly what it could not take."""
    in_force, expired = [], []
    for revocation in sorted(revocations, key=lambda r: r.name):
        until = revocation.until(token_lifetime, clock_skew)
        (expired if until <= now else in_force).append((revocation, until))
    entries = _entries(in_force)
    next_expiry = min((until for _, until in in_force), default=None)
    if backend != "ConfigMap":
        return Compiled(tuple(in_force), tuple(expired), RevocationDocument(backend="redis"), entries, next_expiry)
    if max_document_bytes is None or len(entries.render()) <= max_document_bytes:
        return Compiled(tuple(in_force), tuple(expired), entries, entries, next_expiry)
    oldest_first = sorted(in_force, key=lambda pair: (pair[0].created or _EPOCH, pair[0].name))
    fits, too_many = 0, len(oldest_first)  # the largest prefix that fits, by bisection
    while fits + 1 < too_many:
        middle = (fits + too_many) // 2
        if len(_entries(oldest_first[:middle]).render()) <= max_document_bytes:
            fits = middle
        else:
            too_many = middle
    document = _entries(oldest_first[:fits])
    left_out = tuple(revocation for revocation, _ in oldest_first[fits:])
    return Compiled(tuple(in_force), tuple(expired), document, entries, next_expiry, left_out)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _entries(in_force: Iterable[tuple[Revocation, datetime]]) -> RevocationDocument:
    jti: dict[str, int] = {}
    sub: dict[str, SubjectEntry] = {}
    for revocation, until in in_force:
        end = _seconds_up(until)
        if revocation.jti is not None:
            jti[revocation.jti] = max(end, jti.get(revocation.jti, 0))
        else:
            assert revocation.subject is not None and revocation.issued_before is not None
            before = _seconds_up(revocation.issued_before)
            known = sub.get(revocation.subject)
            if known is not None:
                before, end = max(before, known.issued_before), max(end, known.until)
            sub[revocation.subject] = SubjectEntry(before, end)
    return RevocationDocument(MappingProxyType(dict(sorted(jti.items()))), MappingProxyType(dict(sorted(sub.items()))))


@dataclass(frozen=True)
class RedisLayout:
    """Where one policy's entries live in Redis: one key per entry, expiring at its end.

    ``<prefix>jti:<jti>`` holds the entry's end; ``<prefix>sub:<subject>`` holds issuedBefore
    (NumericDate). A verifier checks a token with one MGET of its two keys. ``<prefix>digest``
    names the entry set written last, so the operator knows which keys were withdrawn; it cannot
    vouch for the entries (Redis evicts single keys), so each mirror checks them all.
    """

    prefix: str

    @classmethod
    def for_policy(cls, namespace: str, policy: str, prefix: str | None = None) -> RedisLayout:
        return cls(prefix if prefix else f"signingkeys:{namespace}/{policy}:")

    def jti_key(self, jti: str) -> str:
        return f"{self.prefix}jti:{jti}"

    def subject_key(self, subject: str) -> str:
        return f"{self.prefix}sub:{subject}"

    @property
    def digest_key(self) -> str:
        return f"{self.prefix}digest"

    def revokes(self, claims: Mapping[str, Any], jti_value: Any, subject_value: Any) -> str | None:
        """Interpret the MGET of (jti_key, subject_key) for ``claims`` like the document does."""
        if jti_value is not None:
            return f"jti {claims.get('jti')} is revoked"
        if subject_value is not None:
            issued = claims.get("iat")
            before = int(subject_value)
            if not isinstance(issued, (int, float)) or isinstance(issued, bool) or issued < before:
                return f"tokens of subject {claims.get('sub')} issued before {before} are revoked"
        return None


def _time(field_path: str, value: Any, why: str) -> datetime:
    if value is None or value == "":
        raise RevocationError(field_path, f"is required: {why}")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RevocationError(field_path, f"must be an RFC 3339 time such as 2026-01-02T15:04:05Z (got {value[:40]!r})") from None
    else:
        raise RevocationError(field_path, "must be an RFC 3339 time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _seconds_up(moment: datetime) -> int:
    return math.ceil(moment.timestamp())


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "?"


def _numeric_date(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53
