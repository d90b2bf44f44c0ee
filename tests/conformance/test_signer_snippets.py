"""The documented signer snippets (Node jose, Go golang-jwt, Java Nimbus) and the Python
library, through 10 rotations, on a mount that gets every change late.

One policy on the suite's timeline, the signing Secret in a kubelet-style volume
(driver.MountedSecret), and four signers reading it: ``signing_key_operator.sign`` and the
snippets of examples/signers/README.md run as processes (verifiers/node/sign.mjs,
verifiers/go/sign, verifiers/java/.../Signer.java). Every 0.6 s each signs a token, in turn, and every
client of the suite verifies it fresh, half-way and at the oldest age it accepts. Rotations are requested with the rotate
annotation, one after another, until there have been 10.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

from signing_key_operator.core.planner import ROTATE_ANNOTATION
from tests.integration.harness import wait_until

from .clients import CLIENTS
from .driver import (
    Recorder,
    finish_signing,
    signing_policy,
    start_clients,
    start_snippet_signers,
    start_verifying,
    stop_verifying,
    verdict_counts,
    warm_up,
)
from .timeline import CLIENT_ARGS, CLOCK_SKEW_S, OLDEST_MARGIN_S, POLICY_SPEC, TOKEN_LIFETIME_S

POLICY = "signer-snippets"
ROTATIONS = 10
BEAT_S = 0.6
"""Each of the four signers every 0.6 s, taking turns (driver.Signer): together as many tokens
as test_rotation's one signer. At 0.3 s each, twice that, the JVM clients fell behind on a
loaded machine (oldest-age checks up to 0.3 s past their deadline); 10 rotations still give
each signer about 10 tokens per key."""
ROTATION_TIMEOUT_S = 30
SIGNERS = ("python", "Node jose", "Go golang-jwt", "Java Nimbus")


@pytest.fixture(scope="module")
def snippet_run(kubeconfig, conformance_namespace, conformance_policies, summary, tmp_path_factory):
    policies = conformance_policies
    log_dir = tmp_path_factory.mktemp("conformance-signer-snippets")
    processes, workers, snippets = {}, [], {}
    scheduler = signer = None
    rotations = []
    with signing_policy(policies, kubeconfig, conformance_namespace, POLICY, POLICY_SPEC, log_dir) as (mounted, sidecar):
        try:
            processes = start_clients(CLIENTS, {name: ["--url", sidecar.url, *args] for name, args in CLIENT_ARGS.items()},
                                      log_dir)
            warm_up(processes, mounted.visible(), TOKEN_LIFETIME_S)
            snippets = start_snippet_signers(mounted.volume, log_dir)
            recorder = Recorder()
            workers, scheduler, signer = start_verifying(processes, recorder, mounted, BEAT_S, OLDEST_MARGIN_S, snippets)
            for number in range(ROTATIONS):
                active = policies.get(POLICY)["status"]["activeKid"]
                policies.annotate(POLICY, {ROTATE_ANNOTATION: f"snippets-{number}-{time.time():.3f}"})
                wait_until(lambda: policies.get(POLICY)["status"].get("activeKid") not in (None, active),
                           ROTATION_TIMEOUT_S, f"rotation {number + 1}")
                rotations.append(time.time())
                if signer.error is not None:
                    raise RuntimeError(f"a signer failed: {signer.error!r}")
            verdicts = finish_signing(signer, scheduler, workers, recorder, TOKEN_LIFETIME_S + CLOCK_SKEW_S + 10)
        finally:
            stop_verifying(signer, scheduler, workers, processes)
            for snippet in snippets.values():
                snippet.close()

    figures: dict[str, dict] = defaultdict(dict)
    for client in CLIENTS:
        for name in SIGNERS:
            mine = [verdict for verdict in verdicts if verdict.client == client.name and verdict.token.signer == name]
            figures[name][client.name] = verdict_counts(mine)
    by_signer = {name: [token for token in signer.signed if token.signer == name] for name in SIGNERS}
    result = {
        "rotations": len(rotations),
        "signed": {name: len(tokens) for name, tokens in by_signer.items()},
        "kids": {name: len({token.kid for token in tokens}) for name, tokens in by_signer.items()},
        "lifetimes": {name: sorted(Counter(token.exp - token.iat for token in tokens)) for name, tokens in by_signer.items()},
        "clients": figures,
    }
    summary["signer_snippets"] = result
    return result


def test_every_signer_signed_through_every_rotation(snippet_run):
    assert snippet_run["rotations"] == ROTATIONS
    for name in SIGNERS:
        # the first key and one per rotation
        assert snippet_run["kids"][name] >= ROTATIONS + 1, snippet_run["kids"]


def test_no_signer_makes_a_token_longer_or_shorter_than_the_policys_lifetime(snippet_run):
    for name in SIGNERS:
        assert snippet_run["lifetimes"][name] == [TOKEN_LIFETIME_S], snippet_run["lifetimes"]


@pytest.mark.parametrize("name", SIGNERS)
def test_every_client_verifies_every_token_of_the_signer(snippet_run, name):
    for client, figures in snippet_run["clients"][name].items():
        assert figures["late"] == 0, (client, figures)
        assert figures["failed"] == 0, (client, figures)
        assert figures["verified"] >= 2 * snippet_run["signed"][name], (client, figures)
