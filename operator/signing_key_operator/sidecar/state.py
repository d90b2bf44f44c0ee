"""The JWK Set the sidecar currently serves, and how new content replaces it.

Only content that passes :func:`signing_key_operator.core.jwks.parse_jwk_set` ever becomes the
served set. Anything else is refused: the last good set stays served, the refusal is logged
(reason and message only: never the content, which might hold key material) and counted in
``signing_key_sidecar_jwks_reloads_refused_total{reason}``. The same bad content offered again
(a resync, a watch replay) is not logged or counted again.

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

from ..core.jwks import InvalidJwkSet, JwkSet, parse_jwk_set
from .metrics import SidecarMetrics

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    LOADED = "loaded"
    """A new set is now served (generation + 1)."""
    UNCHANGED = "unchanged"
    """Same bytes as the served set (a max-age change alone is applied, no new generation)."""
    REFUSED = "refused"
    """Not a valid public JWK Set: the last good set stays served."""


@dataclass(frozen=True)
class Snapshot:
    """One accepted JWK Set, with everything the HTTP layer needs precomputed."""

    body: bytes
    """The set byte for byte as published."""
    etag: str
    """Strong ETag: the quoted hex SHA-256 of ``body`` (identical on every replica)."""
    jwk_set: JwkSet
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


class JwksState:
    """The current good set plus bookkeeping (source presence, last refusal), kept in metrics."""

    def __init__(
        self, metrics: SidecarMetrics | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = metrics if metrics is not None else SidecarMetrics()
        self._clock = clock
        self._current: Snapshot | None = None
        self._source_present: bool | None = None
        self._last_refusal: Refusal | None = None
        self._refused_digest: str | None = None

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

    def offer(self, body: bytes, *, max_age: int | None = None, origin: str = "") -> Outcome:
        """Offer content from the source; serve it if it is a valid public JWK Set."""
        self._set_source_present(True, origin)
        current = self._current
        if current is not None and body == current.body:
            if max_age != current.max_age:
                log.info("jwks max-age from %s is now %s", origin, max_age)
                self._current = replace(current, max_age=max_age)
            self._refused_digest = None
            return Outcome.UNCHANGED
        digest = etag_for(body)
        try:
            jwk_set = parse_jwk_set(body)
        except InvalidJwkSet as exc:
            self._refuse(exc.reason, exc.message, origin, digest)
            return Outcome.REFUSED
        now = self._clock()
        generation = (current.generation if current else 0) + 1
        self._current = Snapshot(
            body=body,
            etag=digest,
            jwk_set=jwk_set,
            generation=generation,
            loaded_at=now,
            last_modified=formatdate(now, usegmt=True),
            max_age=max_age,
            origin=origin,
        )
        self._refused_digest = None
        m = self.metrics
        m.generation.set(generation)
        m.last_reload.set(now)
        m.set_kids(jwk_set.kids)
        log.info(
            "serving JWK Set generation %d from %s: %d key(s), kids=%s, etag=%s",
            generation,
            origin,
            len(jwk_set),
            ",".join(jwk_set.kids),
            digest,
        )
        return Outcome.LOADED

    def refuse(self, reason: str, message: str, *, origin: str = "", content: bytes | None = None) -> None:
        """Record content the source could not even offer (missing data key, unreadable file)."""
        self._refuse(reason, message, origin, etag_for(content) if content is not None else f"{reason}:{message}")

    def source_missing(self, origin: str) -> None:
        """The ConfigMap (or the file) is gone. The last good set stays served: see app.py."""
        self._set_source_present(False, origin)

    def _set_source_present(self, present: bool, origin: str) -> None:
        if present == self._source_present:
            return
        self._source_present = present
        self.metrics.source_present.set(1 if present else 0)
        if not present:
            self._refused_digest = None
            if self._current is not None:
                log.warning(
                    "%s is gone; still serving the last good JWK Set (generation %d) until it returns",
                    origin,
                    self._current.generation,
                )
            else:
                log.warning("%s does not exist (yet); no JWK Set to serve", origin)
        elif self._current is not None:
            log.info("%s is back", origin)

    def _refuse(self, reason: str, message: str, origin: str, digest: str) -> None:
        if digest == self._refused_digest:
            return  # the same bad content again (resync, watch replay): already reported
        self._refused_digest = digest
        self._last_refusal = Refusal(reason=reason, message=message, at=self._clock(), origin=origin)
        self.metrics.refused.labels(reason=reason).inc()
        if self._current is not None:
            log.error(
                "refused new content from %s (%s: %s); still serving JWK Set generation %d",
                origin,
                reason,
                message,
                self._current.generation,
            )
        else:
            log.error("refused content from %s (%s: %s); no valid JWK Set loaded yet", origin, reason, message)
