"""Judging what the ``spec.jwks.servedAt`` URLs serve against what the policy publishes.

The bug this product exists for happens between the key store and the verifier: a JWKS
endpoint that does not follow the store (the new key missing, a retired or revoked key still
served). Between the ConfigMap the operator writes and the verifier are the JWKS server, the
kubelet's volume lag, Services, ingresses, CDNs and gateways, so the operator reads the set back
where verifiers fetch it. The controller fetches (served_probe.py) and remembers what it saw;
this module decides, for each URL and for the policy, whether verifiers see the published set,
and why not. Pure: no I/O, the clock passed in.

A URL that does not serve exactly the published set gets a reason from the fixed list the
``JWKSServed`` condition uses. Right after a change every URL lags for a moment (the JWKS
server reloads, caches expire), so a reason alone is news, not an alarm: it becomes one (a
Warning Event, ``Degraded``) only once the URL has lagged longer than ``grace``, the JWKS
server's reload time plus ``jwks.maxAge``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .durations import format_duration

__all__ = [
    "ACTIVE_KEY_NOT_SERVED",
    "INVALID_DOCUMENT",
    "NEXT_KEY_NOT_SERVED",
    "Observation",
    "PublishedView",
    "REASONS",
    "REMOVED_KEY_STILL_SERVED",
    "REVOKED_KEY_STILL_SERVED",
    "SERVED",
    "UNREACHABLE",
    "UrlVerdict",
    "bounded",
    "judge_url",
    "served_condition",
    "served_everywhere",
]

SERVED = "Served"
UNREACHABLE = "Unreachable"
INVALID_DOCUMENT = "InvalidDocument"
REVOKED_KEY_STILL_SERVED = "RevokedKeyStillServed"
ACTIVE_KEY_NOT_SERVED = "ActiveKeyNotServed"
REMOVED_KEY_STILL_SERVED = "RemovedKeyStillServed"
NEXT_KEY_NOT_SERVED = "NextKeyNotServed"

REASONS = (UNREACHABLE, INVALID_DOCUMENT, REVOKED_KEY_STILL_SERVED, ACTIVE_KEY_NOT_SERVED, REMOVED_KEY_STILL_SERVED, NEXT_KEY_NOT_SERVED)
"""Most severe first: the condition names the worst a URL shows. A URL that cannot be read says
nothing about keys; a revoked key still served lets a leaked key verify; a missing active key
fails tokens now; a removed key served is stale; a missing next key only holds rotation back."""

MESSAGE_LIMIT = 2048
"""Longest condition message: eight URLs with several kids each must not grow a status write."""


@dataclass(frozen=True)
class Observation:
    """One check of one URL."""

    url: str
    checked: datetime
    kids: tuple[str, ...] | None = None
    """The kids served, in order; None when the check failed."""
    etag: str | None = None
    error: str | None = None
    """Why the check failed, for people (never a document's content)."""
    invalid_document: bool = False
    """The URL answered, but not with a valid public JWK Set (else it could not be reached)."""

    def same_as(self, other: Observation | None) -> bool:
        """Whether it found what ``other`` found (the time of the check aside)."""
        return other is not None and (self.kids, self.etag, self.error, self.invalid_document) == (
            other.kids, other.etag, other.error, other.invalid_document
        )


@dataclass(frozen=True)
class PublishedView:
    """What the policy publishes now, as far as judging a served set needs."""

    published: tuple[str, ...]
    """Kids in the JWKS ConfigMap (next, active and retired keys)."""
    active: str | None
    active_since: datetime | None = None
    """When the active key was published: an emergency key may not be served yet."""
    next_kid: str | None = None
    next_since: datetime | None = None
    next_first_served: datetime | None = None
    """When every URL was first seen serving the next key (None: not yet)."""
    revoked: Mapping[str, datetime] = field(default_factory=dict)
    """Kids revoked and not yet forgotten -> when they were revoked."""


@dataclass(frozen=True)
class UrlVerdict:
    url: str
    reason: str
    """:data:`SERVED` or one of :data:`REASONS`."""
    message: str
    in_sync: bool
    """Serves exactly the published set (the lag metric is 0)."""
    alarming: tuple[tuple[str, str], ...] = ()
    """(reason, kid) lagging past the grace: worth a Warning Event and Degraded. An unreadable
    URL is not alarming on its own (rotation just waits); kid "" stands for no kid."""


def served_everywhere(observations: Iterable[Observation]) -> frozenset[str]:
    """The kids every URL serves now (a URL that could not be read serves none)."""
    result: frozenset[str] | None = None
    for observation in observations:
        kids = frozenset(observation.kids or ())
        result = kids if result is None else result & kids
    return result or frozenset()


def judge_url(
    observation: Observation, view: PublishedView, extra_since: Mapping[str, datetime], grace: timedelta, now: datetime
) -> UrlVerdict:
    """``extra_since``: for kids this URL serves that are not published, since when (when it was
    first seen serving them after they left, as the caller remembers it); a revoked kid counts
    from its revocation instead."""
    url = observation.url
    if observation.kids is None:
        reason = INVALID_DOCUMENT if observation.invalid_document else UNREACHABLE
        return UrlVerdict(url, reason, f"{url}: {observation.error}", in_sync=False)
    served = set(observation.kids)
    problems: list[tuple[str, str, str, bool]] = []  # reason, kid, text, alarming
    for kid in observation.kids:
        if kid in view.published:
            continue
        revoked = view.revoked.get(kid)
        since = revoked or extra_since.get(kid, now)
        late = now - since > grace
        what = "revoked" if revoked else "no longer published"
        problems.append((
            REVOKED_KEY_STILL_SERVED if revoked else REMOVED_KEY_STILL_SERVED, kid,
            f"still serves {what} key {kid} {_for(now - since, grace)}", late,
        ))
    if view.active is not None and view.active not in served:
        since = view.active_since or now
        problems.append((ACTIVE_KEY_NOT_SERVED, view.active, f"does not serve the signing key {view.active} {_for(now - since, grace)}", now - since > grace))
    if view.next_kid is not None and view.next_kid not in served:
        since = view.next_since or now
        problems.append((NEXT_KEY_NOT_SERVED, view.next_kid, f"does not serve the next key {view.next_kid} yet (published {_ago(now - since)} ago)", False))
    missing = [kid for kid in view.published if kid not in served and kid not in (view.active, view.next_kid)]
    if missing:
        # A retired key missing: its tokens fail. Rare (it was served before), and as serious
        # as the signing key missing, since tokens it signed are still in use.
        problems.append((ACTIVE_KEY_NOT_SERVED, missing[0], f"does not serve retired key(s) {', '.join(missing)} whose tokens are still valid", True))
    if not problems:
        return UrlVerdict(url, SERVED, f"{url}: serves the published set", in_sync=True)
    problems.sort(key=lambda problem: REASONS.index(problem[0]))
    message = f"{url}: " + "; ".join(text for _, _, text, _ in problems)
    return UrlVerdict(
        url, problems[0][0], message, in_sync=False,
        alarming=tuple((reason, kid) for reason, kid, _, late in problems if late),
    )


def served_condition(verdicts: Sequence[UrlVerdict]) -> tuple[str, str, str]:
    """The ``JWKSServed`` condition: (status, reason, message)."""
    lagging = sorted((v for v in verdicts if v.reason != SERVED), key=lambda v: REASONS.index(v.reason))
    if not lagging:
        count = len(verdicts)
        return "True", SERVED, f"{'the' if count == 1 else 'every one of the'} {count} servedAt URL{'s' if count != 1 else ''} serve{'s' if count == 1 else ''} the published set"
    return "False", lagging[0].reason, bounded("; ".join(v.message for v in lagging), MESSAGE_LIMIT)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _for(elapsed: timedelta, grace: timedelta) -> str:
    side = "past" if elapsed > grace else "within"
    return f"for {_ago(elapsed)} ({side} the {_ago(grace)} a JWKS server and caches may take)"


def _ago(elapsed: timedelta) -> str:
    return format_duration(timedelta(seconds=max(0, int(elapsed.total_seconds()))), compact=True)
