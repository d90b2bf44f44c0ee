"""The documents the sidecar currently serves, and how new content replaces them.

Two documents, one rule. :class:`JwksState` holds the JWK Set: only content that passes
:func:`signing_key_operator.core.jwks.parse_jwk_set` ever becomes the served set.
:class:`RevocationState` holds the revocation document, checked by
:func:`signing_key_operator.core.revocations.parse_revocation_document`. Anything else is
refused: the last good document stays served, the refusal is logged (reason and message only:
never the content, which might hold key material) and counted in
``signing_key_sidecar_{jwks,revocations}_reloads_refused_total{reason}``. The same bad content
offered again (a resync, a watch replay) is not logged or counted again; nor is the same invalid
max-age, which never holds a document back (``..._max_age_ignored_total``).

All methods are called from the event loop thread only (sources hop onto it first).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.utils import formatdate
from enum import Enum

from typing import Any

from ..core.jwks import InvalidJwkSet, parse_jwk_set
from ..core.revocations import InvalidRevocationDocument, parse_revocation_document
from .metrics import SidecarMetrics

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    LOADED = "loaded"
    """A new document is now served (generation + 1)."""
    UNCHANGED = "unchanged"
    """Same bytes as the served set (a max-age change alone is applied, no new generation)."""
    REFUSED = "refused"
    """Not a valid document: the last good one stays served."""


@dataclass(frozen=True)
class Snapshot:
    """One accepted document, with everything the HTTP layer needs precomputed."""

    body: bytes
    """The document byte for byte as published."""
    etag: str
    """Strong ETag: the quoted hex SHA-256 of ``body`` (identical on every replica)."""
    content: Any
    """The parsed document: a JwkSet, or a RevocationDocument."""
    generation: int
    """1 for the first set this process loaded, +1 for every change."""
    loaded_at: float
    """Unix time this process first loaded these bytes."""
    last_modified: str
    """``loaded_at`` as an HTTP-date."""
    max_age: int | None
    """max-age published with the set (annotation / ``max-age`` file), if any."""
    origin: str
    """Where it came from, for logs (e.g. ``configmap ns/name rv=123``)."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    at: float
    origin: str


def etag_for(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


class PublishedState:
    """The current good document plus bookkeeping (source presence, last refusal), kept in
    metrics. Subclasses say how to parse and what to record when a document is loaded."""

    what = "document"
    """For log lines: what is served."""

    def __init__(
        self, metrics: SidecarMetrics | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = metrics if metrics is not None else SidecarMetrics()
        self._clock = clock
        self._current: Snapshot | None = None
        self._source_present: bool | None = None
        self._last_refusal: Refusal | None = None
        self._refused_digest: str | None = None
        self._invalid_max_age: str | None = None

    @property
    def current(self) -> Snapshot | None:
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def source_present(self) -> bool | None:
        """True/False once the source said whether the object/file exists; None before."""
        return self._source_present

    @property
    def last_refusal(self) -> Refusal | None:
        return self._last_refusal

    def offer(
        self, body: bytes, *, max_age: int | None = None, origin: str = "", invalid_max_age: str | None = None
    ) -> Outcome:
        """Offer content from the source; serve it if it is a valid document. ``invalid_max_age``
        describes a published max-age the source had to ignore (``max_age`` is the fallback)."""
        self._set_source_present(True, origin)
        self._report_invalid_max_age(invalid_max_age, origin)
        current = self._current
        if current is not None and body == current.body:
            if max_age != current.max_age:
                log.info("jwks max-age from %s is now %s", origin, max_age)
                self._current = replace(current, max_age=max_age)
            self._refused_digest = None
            return Outcome.UNCHANGED
        digest = etag_for(body)
        try:
            content = self._parse(body)
        except (InvalidJwkSet, InvalidRevocationDocument) as exc:
            self._refuse(exc.reason, exc.message, origin, digest)
            return Outcome.REFUSED
        now = self._clock()
        generation = (current.generation if current else 0) + 1
        self._current = Snapshot(
            body=body,
            etag=digest,
            content=content,
            generation=generation,
            loaded_at=now,
            last_modified=formatdate(now, usegmt=True),
            max_age=max_age,
            origin=origin,
        )
        self._refused_digest = None
        self._loaded(self._current)
        return Outcome.LOADED

    def _report_invalid_max_age(self, invalid: str | None, origin: str) -> None:
        if invalid == self._invalid_max_age:
            return  # the same bad value again (resync, watch replay): already reported
        self._invalid_max_age = invalid
        if invalid is not None:
            log.warning("ignoring invalid max-age from %s (%s); the %s goes on with the fallback max-age",
                        origin, invalid, self.what)
            self._count_invalid_max_age()

    def _parse(self, body: bytes) -> Any:
        raise NotImplementedError

    def _loaded(self, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def _count_refusal(self, reason: str) -> None:
        raise NotImplementedError

    def _count_invalid_max_age(self) -> None:
        raise NotImplementedError

    def _record_source_present(self, present: bool) -> None:
        raise NotImplementedError

    def refuse(self, reason: str, message: str, *, origin: str = "", content: bytes | None = None) -> None:
        """Record content the source could not even offer (missing data key, unreadable file)."""
        self._refuse(reason, message, origin, etag_for(content) if content is not None else f"{reason}:{message}")

    def source_missing(self, origin: str) -> None:
        """The ConfigMap (or the file) is gone. The last good document stays served: see app.py."""
        self._set_source_present(False, origin)

    def _set_source_present(self, present: bool, origin: str) -> None:
        if present == self._source_present:
            return
        self._source_present = present
        self._record_source_present(present)
        if not present:
            self._refused_digest = None
            if self._current is not None:
                log.warning(
                    "%s is gone; still serving the last good %s (generation %d) until it returns",
                    origin,
                    self.what,
                    self._current.generation,
                )
            else:
                log.warning("%s does not exist (yet); no %s to serve", origin, self.what)
        elif self._current is not None:
            log.info("%s is back", origin)

    def _refuse(self, reason: str, message: str, origin: str, digest: str) -> None:
        if digest == self._refused_digest:
            return  # the same bad content again (resync, watch replay): already reported
        self._refused_digest = digest
        self._last_refusal = Refusal(reason=reason, message=message, at=self._clock(), origin=origin)
        self._count_refusal(reason)
        if self._current is not None:
            log.error(
                "refused new content from %s (%s: %s); still serving %s generation %d",
                origin,
                reason,
                message,
                self.what,
                self._current.generation,
            )
        else:
            log.error("refused content from %s (%s: %s); no valid %s loaded yet", origin, reason, message, self.what)


class JwksState(PublishedState):
    """The JWK Set verifiers fetch."""

    what = "JWK Set"

    def _parse(self, body: bytes) -> Any:
        return parse_jwk_set(body)

    def _loaded(self, snapshot: Snapshot) -> None:
        m, jwk_set = self.metrics, snapshot.content
        m.generation.set(snapshot.generation)
        m.last_reload.set(snapshot.loaded_at)
        m.set_kids(jwk_set.kids)
        log.info(
            "serving JWK Set generation %d from %s: %d key(s), kids=%s, etag=%s",
            snapshot.generation,
            snapshot.origin,
            len(jwk_set),
            ",".join(jwk_set.kids),
            snapshot.etag,
        )

    def _count_refusal(self, reason: str) -> None:
        self.metrics.refused.labels(reason=reason).inc()

    def _count_invalid_max_age(self) -> None:
        self.metrics.max_age_ignored.inc()

    def _record_source_present(self, present: bool) -> None:
        self.metrics.source_present.set(1 if present else 0)


class RevocationState(PublishedState):
    """The revocation document (TokenRevocations in force) verifiers fetch."""

    what = "revocation document"

    def _parse(self, body: bytes) -> Any:
        return parse_revocation_document(body)

    def _loaded(self, snapshot: Snapshot) -> None:
        m, document = self.metrics, snapshot.content
        m.revocations_generation.set(snapshot.generation)
        m.revocations_last_reload.set(snapshot.loaded_at)
        m.revocations_entries.set(len(document))
        log.info(
            "serving revocation document generation %d from %s: backend %s, %d jti, %d subject(s), etag=%s",
            snapshot.generation,
            snapshot.origin,
            document.backend,
            len(document.jti),
            len(document.sub),
            snapshot.etag,
        )

    def _count_refusal(self, reason: str) -> None:
        self.metrics.revocations_refused.labels(reason=reason).inc()

    def _count_invalid_max_age(self) -> None:
        self.metrics.revocations_max_age_ignored.inc()

    def _record_source_present(self, present: bool) -> None:
        self.metrics.revocations_source_present.set(1 if present else 0)
