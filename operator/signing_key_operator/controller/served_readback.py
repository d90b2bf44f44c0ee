"""Reads each policy's JWKS back where verifiers fetch it (``spec.jwks.servedAt``).

Shaped by three rules:

- The fetch is a verifier's: a plain GET with no cache-busting headers, so a cache in the way
  (a CDN, an ingress, a JWKS server reading a stale volume) is seen as verifiers see it. It is
  bounded (body size, total time, redirects), and whatever goes wrong (an HTTP error, a TLS
  failure, a body that is not a public JWK Set) becomes an :class:`~.core.served.Observation`
  with an error, never an exception out of here.
- What rotation depends on is not kept here: the moment a key was first seen everywhere is
  written to its key Secret by the planner (``first_served``). This process only remembers
  what it needs for reporting (since when a URL lags, since when a removed kid is still
  served, which Warnings it posted), so a restart costs at most a repeated Event.
- Checks are cheap and write nothing unless something changed: the policy loop checks often
  while something is pending (a URL not serving the published set) and rarely otherwise, and
  only a check that finds something new (or a lag that crosses the grace) leads to a reconcile
  and its status write. An idle policy whose endpoints agree makes zero API writes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from ..core.jwks import InvalidJwkSet, parse_jwk_set
from ..core.planner import KeyRecord, KeyState, PlanEvent
from ..core.served import (
    INVALID_DOCUMENT, SERVED, UNREACHABLE, bounded, Observation, PublishedView, UrlVerdict, judge_url,
    served_condition,
)
from ..core.spec import PolicySpec
from ..k8s import objects
from ..k8s.api import CONFIGMAPS, KubeApi
from .metrics import OperatorMetrics
from .settings import OperatorSettings

logger = logging.getLogger(__name__)

USER_AGENT = "signing-key-operator (served JWKS read-back)"
"""What the JWKS server's access logs and metrics see: the operator, not a verifier."""

_ERROR_LIMIT = 300


@dataclass
class _Memory:
    """What one policy's checks left behind, for reporting only."""

    view: PublishedView | None = None
    observations: dict[str, Observation] = field(default_factory=dict)
    published_since: datetime | None = None
    lagging_since: dict[str, datetime] = field(default_factory=dict)
    extra_since: dict[str, dict[str, datetime]] = field(default_factory=dict)
    warned: set[tuple[str, str, str]] = field(default_factory=set)
    """(url, reason, kid) alarms already posted as a Warning (forgotten once they clear)."""
    held_warned: set[str] = field(default_factory=set)
    judged: tuple[tuple[str, ...], frozenset] | None = None
    """The reasons and alarms the last report showed: a check that finds them changed reconciles."""
    revoked_gone: dict[str, tuple[str, datetime, datetime]] = field(default_factory=dict)
    """url -> (kid, revoked, first check that found it gone): the latest one per URL."""
    hold_due: datetime | None = None
    """When the next key would sign without the read-back: a check after it reconciles once, so
    the hold is reported (ActivationHeld) even though the check found nothing new."""
    news: tuple[Observation, ...] | None = None
    """What a check between reconciles found new, for the reconcile it wakes."""
    failed_checks: int = 0
    """Checks in a row that found a URL unreadable: they back off."""
    grace: timedelta = timedelta(0)
    """How long a URL may lag before it is an alarm: the JWKS server's reload time + jwks.maxAge."""


@dataclass(frozen=True)
class ServedReport:
    """What a reconcile writes and posts about the served sets."""

    status: list[dict[str, Any]]
    condition: tuple[str, str, str]
    alarms: tuple[str, ...]
    """Messages of URLs lagging past the grace (Degraded while there are any)."""
    events: tuple[PlanEvent, ...]
    next_check: datetime


class ServedReadBack:
    def __init__(self, api: KubeApi, settings: OperatorSettings, metrics: OperatorMetrics, clock: Callable[[], datetime]):
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._memory: dict[str, _Memory] = {}
        self._contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}
        self._default_context: ssl.SSLContext | None = None

    # -- fetching ---------------------------------------------------------------------------
    async def observe(self, policy: dict[str, Any], spec: PolicySpec, reuse_within: timedelta | None = None) -> tuple[Observation, ...]:
        """Check every servedAt URL once, concurrently. ``reuse_within``: what a check this recent
        found is used instead (the reconcile that follows a check finding news need not wait
        for the slowest URL a second time)."""
        memory = self._memory.get(policy["metadata"]["uid"])
        if reuse_within is not None and memory is not None and memory.news is not None:
            news, memory.news = memory.news, None
            if [o.url for o in news] == list(spec.served_at) and all(self.clock() - o.checked < reuse_within for o in news):
                return news
        context, problem = await self._tls_context(policy["metadata"]["namespace"], spec)
        results = await asyncio.gather(*(self._fetch(url, context, problem) for url in spec.served_at))
        for observation in results:
            result = "ok" if observation.kids is not None else ("invalid" if observation.invalid_document else "unreachable")
            self.metrics.served_checks.labels(result).inc()
        return tuple(results)

    async def _fetch(self, url: str, context: ssl.SSLContext, tls_problem: str | None) -> Observation:
        now = self.clock()
        if tls_problem is not None and url.startswith("https://"):
            return Observation(url, now, error=tls_problem)
        limit = self.settings.served_check_max_bytes
        try:
            session = self._client()
            async with session.get(
                url, ssl=context if url.startswith("https://") else True, max_redirects=self.settings.served_check_redirects,
                timeout=aiohttp.ClientTimeout(total=self.settings.served_check_timeout.total_seconds()),
            ) as response:
                if response.status != 200:
                    return Observation(url, now, error=f"answered HTTP {response.status} {response.reason or ''}".rstrip())
                declared = response.content_length
                if declared is not None and declared > limit:
                    return Observation(url, now, error=f"body of {declared} bytes is over the {limit}-byte limit", invalid_document=True)
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limit:
                        return Observation(url, now, error=f"body is over the {limit}-byte limit", invalid_document=True)
                etag = response.headers.get("ETag")
        except aiohttp.TooManyRedirects:
            return Observation(url, now, error=f"more than {self.settings.served_check_redirects} redirects")
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as error:
            return Observation(url, now, error=_bounded(f"TLS: {error}"))
        except asyncio.TimeoutError:
            return Observation(url, now, error=f"no complete answer within {self.settings.served_check_timeout.total_seconds():g}s")
        except aiohttp.ClientConnectorError as error:
            return Observation(url, now, error=_bounded(f"cannot connect to {error.host}:{error.port}: {error.os_error.strerror or error.os_error}"))
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return Observation(url, now, error=_bounded(f"{type(error).__name__}: {error}"))
        try:
            served = parse_jwk_set(bytes(body))
        except InvalidJwkSet as invalid:  # its message never quotes key material
            return Observation(url, now, error=_bounded(f"not a valid public JWK Set: {invalid.message}"), invalid_document=True)
        return Observation(url, now, kids=served.kids, etag=etag[:256] if etag else None)

    def last_observations(self, uid: str, spec: PolicySpec) -> tuple[Observation, ...]:
        """What the last check found, for a reconcile that must not wait for a new one (a URL
        never checked counts as unknown)."""
        memory = self._memory.get(uid)
        seen = memory.observations if memory is not None else {}
        return tuple(seen.get(url) or Observation(url, self.clock(), error="not checked yet") for url in spec.served_at)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No proxy from the environment and no cookies: a check must not depend on how the
            # operator's pod is set up, and nothing it is answered may change the next one. A new
            # connection per check: behind a Service, a kept-alive connection stays pinned to one
            # pod (conntrack), so a stale replica, or the old pod of a rollout, would be all the
            # checks ever saw, or never seen; a fresh one lets kube-proxy pick again each time.
            self._session = aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json, application/jwk-set+json"},
                connector=aiohttp.TCPConnector(limit=self.settings.served_check_connections, force_close=True),
            )
        return self._session

    async def _tls_context(self, namespace: str, spec: PolicySpec) -> tuple[ssl.SSLContext, str | None]:
        """The context https URLs are verified with, or the reason there is none to use."""
        if self._default_context is None:
            self._default_context = ssl.create_default_context()
        if spec.ca_bundle is None or not any(url.startswith("https://") for url in spec.served_at):
            return self._default_context, None
        name, key = spec.ca_bundle
        configmap = await self.api.get(CONFIGMAPS, namespace, name)
        if configmap is None:
            return self._default_context, f"spec.jwks.caBundleRef: ConfigMap {name} does not exist"
        pem = (configmap.get("data") or {}).get(key)
        if not pem:
            return self._default_context, f"spec.jwks.caBundleRef: ConfigMap {name} has no key {key}"
        cache_key = (namespace, name, configmap["metadata"].get("resourceVersion", ""))
        if cache_key not in self._contexts:
            try:
                context = ssl.create_default_context(cadata=pem)
            except (ssl.SSLError, ValueError) as error:
                return self._default_context, _bounded(f"spec.jwks.caBundleRef: {name}/{key} holds no usable PEM certificates ({error})")
            self._contexts = {k: v for k, v in self._contexts.items() if k[:2] != cache_key[:2]}
            self._contexts[cache_key] = context
        return self._contexts[cache_key], None

    # -- judging ----------------------------------------------------------------------------
    def report(
        self, policy: dict[str, Any], spec: PolicySpec, records: Sequence[KeyRecord], observations: Sequence[Observation],
        held: Sequence[str], hold_due: datetime | None,
    ) -> ServedReport:
        """Judge ``observations`` against what ``records`` publish now, remember it, and say
        what to write and post. ``held``: kids that would sign by now without the read-back."""
        metadata = policy["metadata"]
        memory = self._memory.setdefault(metadata["uid"], _Memory())
        now = self.clock()
        memory.grace = self.settings.jwks_server_reload_time + spec.jwks_max_age
        waiting = _view(records).next_kid
        memory.hold_due = hold_due if hold_due is not None and not held and waiting not in memory.held_warned else None
        self._remember_view(memory, _view(records), now)
        verdicts = self._judge(memory, observations, now)
        events = self._events(memory, observations, verdicts, held, now)
        memory.observations = {o.url: o for o in observations}
        memory.judged = _judged(verdicts)
        previous = {e.get("url"): e for e in (policy.get("status") or {}).get("servedAt") or []}
        status = [_status_entry(o, previous.get(o.url), memory.revoked_gone.get(o.url)) for o in observations]
        self.metrics.observe_served(
            metadata["namespace"], metadata["name"], dict(memory.lagging_since), list(spec.served_at), memory.grace,
        )
        alarms = tuple(v.message for v in verdicts if v.alarming)
        return ServedReport(status, served_condition(verdicts), alarms, tuple(events), self._next_check(memory, verdicts, now))

    async def check(self, policy: dict[str, Any], spec: PolicySpec) -> tuple[bool, datetime]:
        """A check between reconciles: whether it found something a reconcile must act on or
        report (then the caller reconciles, which checks again), and when to check next."""
        memory = self._memory.get(policy["metadata"]["uid"])
        observations = await self.observe(policy, spec)
        now = self.clock()
        if memory is None or memory.view is None or (memory.hold_due is not None and now >= memory.hold_due):
            return True, now
        memory.news = observations
        if any(not o.same_as(memory.observations.get(o.url)) for o in observations):
            return True, now
        verdicts = self._judge(memory, observations, now)
        if _judged(verdicts) != memory.judged:
            return True, now
        memory.news = None
        memory.observations = {o.url: o for o in observations}
        return False, self._next_check(memory, verdicts, now)

    def _remember_view(self, memory: _Memory, view: PublishedView, now: datetime) -> None:
        before = memory.view
        if before is None or before.published != view.published:
            memory.published_since = now
            # A kid that leaves counts as "still served" from now, at every URL that serves it.
            left = set(before.published) - set(view.published) if before is not None else set()
            for url in set(memory.extra_since) | set(memory.observations):
                memory.extra_since.setdefault(url, {}).update({kid: now for kid in left})
        memory.view = view

    def _judge(self, memory: _Memory, observations: Sequence[Observation], now: datetime) -> list[UrlVerdict]:
        assert memory.view is not None
        grace = memory.grace
        verdicts = []
        for observation in observations:
            extras = memory.extra_since.setdefault(observation.url, {})
            served = set(observation.kids or ())
            for kid in served - set(memory.view.published) - set(memory.view.revoked):
                extras.setdefault(kid, now)
            for kid in [kid for kid in extras if kid not in served and observation.kids is not None]:
                del extras[kid]
            verdict = judge_url(observation, memory.view, extras, grace, now)
            if verdict.in_sync:
                memory.lagging_since.pop(observation.url, None)
            else:
                memory.lagging_since.setdefault(observation.url, memory.published_since or now)
            if verdict.reason in (UNREACHABLE, INVALID_DOCUMENT) and now - memory.lagging_since[observation.url] > grace:
                # Verifiers cannot fetch keys here either: an alarm once it outlasts the grace.
                verdict = UrlVerdict(verdict.url, verdict.reason, verdict.message, False, ((verdict.reason, ""),))
            verdicts.append(verdict)
        return verdicts

    def _events(self, memory: _Memory, observations, verdicts: list[UrlVerdict], held: Sequence[str], now: datetime) -> list[PlanEvent]:
        events = []
        current = {(v.url, reason, kid) for v in verdicts for reason, kid in v.alarming}
        for url, reason, kid in sorted(current - memory.warned):
            verdict = next(v for v in verdicts if v.url == url)
            events.append(PlanEvent("Warning", "JWKSNotServed", f"{reason}: {verdict.message}"))
        memory.warned = current
        waiting = [kid for kid in held if kid not in memory.held_warned]
        if waiting:
            lagging = "; ".join(v.message for v in verdicts if v.reason != SERVED) or "every URL serves it now"
            events.append(PlanEvent(
                "Warning", "ActivationHeld",
                f"Key {waiting[0]} would sign by now but is not yet served at every spec.jwks.servedAt URL ({lagging}); "
                "the current key keeps signing, and the new one signs publishAhead after every URL serves it",
            ))
        memory.held_warned = set(held) | (memory.held_warned & set(memory.view.published if memory.view else ()))
        assert memory.view is not None
        for observation in observations:
            previous = memory.observations.get(observation.url)
            if observation.kids is None or previous is None:
                continue
            for kid, revoked in memory.view.revoked.items():
                # Served at the last check, gone at this one (a kid never served here is not news).
                if kid in observation.kids or previous.kids is None or kid not in previous.kids:
                    continue
                memory.revoked_gone[observation.url] = (kid, revoked, observation.checked)
                seconds = max(0, int((observation.checked - revoked).total_seconds()))
                events.append(PlanEvent(
                    "Normal", "RevokedKeyUnserved",
                    f"{observation.url} stopped serving revoked key {kid} within {seconds}s of its revocation",
                ))
        return events

    def _next_check(self, memory: _Memory, verdicts: Sequence[UrlVerdict], now: datetime) -> datetime:
        """Often while a URL lags (a key on its way in or out), backing off while one cannot be
        read (a JWKS server not up yet, an outage), rarely once every URL agrees."""
        settings = self.settings
        failing = any(v.reason in (UNREACHABLE, INVALID_DOCUMENT) for v in verdicts)
        memory.failed_checks = memory.failed_checks + 1 if failing else 0
        if any(not v.in_sync and v.reason not in (UNREACHABLE, INVALID_DOCUMENT) for v in verdicts):
            interval = settings.served_check_interval
        elif failing:
            interval = min(settings.served_check_interval * 2 ** min(memory.failed_checks - 1, 16), settings.served_check_error_max_interval)
        else:
            interval = settings.served_check_idle_interval
        return now + interval

    def forget(self, uid: str) -> None:
        self._memory.pop(uid, None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _view(records: Sequence[KeyRecord]) -> PublishedView:
    active = next((r for r in records if r.state is KeyState.ACTIVE), None)
    waiting = next((r for r in records if r.state is KeyState.NEXT), None)
    return PublishedView(
        published=tuple(r.kid for r in sorted(records, key=lambda r: r.serial) if r.published),
        active=active.kid if active else None,
        active_since=active.created if active else None,
        next_kid=waiting.kid if waiting else None,
        next_since=waiting.created if waiting else None,
        next_first_served=waiting.first_served if waiting else None,
        revoked={r.kid: r.revoked for r in records if r.state is KeyState.REVOKED and r.revoked is not None},
    )


def _judged(verdicts: Sequence[UrlVerdict]) -> tuple[tuple[str, ...], frozenset]:
    return tuple(v.reason for v in verdicts), frozenset((v.url, *alarm) for v in verdicts for alarm in v.alarming)


def _status_entry(
    observation: Observation, previous: Mapping[str, Any] | None, revoked_gone: tuple[str, datetime, datetime] | None,
) -> dict[str, Any]:
    """The status.servedAt entry for one URL. ``observedAt`` stays the time this content was
    first found, so a check that finds the same leaves the entry, and the status, unchanged."""
    entry: dict[str, Any] = {
        "url": observation.url,
        "kids": list(observation.kids) if observation.kids is not None else None,
        "etag": observation.etag,
        "lastError": observation.error,
    }
    same = previous is not None and all(previous.get(k) == v for k, v in entry.items())
    entry["observedAt"] = previous["observedAt"] if same and previous.get("observedAt") else objects.format_time(observation.checked)
    if revoked_gone is not None:
        kid, revoked, gone = revoked_gone
        entry["revokedKid"] = {
            "kid": kid, "revoked": objects.format_time(revoked), "goneBy": objects.format_time(gone),
            "servedForSeconds": max(0, int((gone - revoked).total_seconds())),
        }
    elif previous is not None and previous.get("revokedKid"):
        entry["revokedKid"] = previous["revokedKid"]
    return {k: v for k, v in entry.items() if v is not None}


def _bounded(text: str) -> str:
    return bounded(text, _ERROR_LIMIT)
