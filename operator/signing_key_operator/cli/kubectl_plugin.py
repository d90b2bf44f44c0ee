"""``kubectl signingkeys``: the commands people run against a SigningKeyPolicy.

Installed as ``kubectl-signingkeys`` (kubectl finds plugins by that name on PATH). One screen
that explains a policy (``status``, with its keys drawn as a timeline), the rotate and
revoke-kid annotations written for you with what they will do said first (``rotate``,
``revoke-kid``), ``revoke-token`` as the operator's own command has it, and ``inspect``, which
says what a token is to the policy: which key signed it, that key's state, whether the
published set verifies it, whether it is revoked, when it expires.

Each command gathers what it needs from the API first, then decides and prints; a refusal by
the API (not found, not allowed) is a sentence with the verb and the resource, exit code 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from ..core.durations import format_duration
from ..core.planner import REVOKE_ANNOTATION, ROTATE_ANNOTATION
from ..core.revocations import RevocationError, compile_revocations, parse_revocation
from ..core.spec import PolicySpec, SpecError
from ..k8s.objects import format_time, parse_time
from . import revoke_token
from .key_timeline import build_timeline, render_svg, render_text, stamp
from .kube import GROUP, VERSION, CommandError, connect, explain

PLURAL = "signingkeypolicies"
EVENTS_SHOWN = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl signingkeys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("--namespace", "-n", help="the policy's namespace (default: the kubeconfig context's)")
        command.add_argument("--kubeconfig", help="kubeconfig path (default: KUBECONFIG, else ~/.kube/config)")

    status = commands.add_parser("status", help="one screen that explains a policy, its keys drawn as a timeline")
    status.add_argument("policy")
    status.add_argument("--output", "-o", choices=("text", "json", "yaml"), default="text")
    status.add_argument("--format", choices=("text", "svg"), default="text", help="svg: the timeline as an SVG document")
    status.add_argument("--no-color", action="store_true", help="no colour (also when NO_COLOR is set or not a terminal)")
    status.add_argument("--width", type=int, help="columns (default: the terminal's)")
    common(status)
    status.set_defaults(handler=status_command)

    rotate = commands.add_parser("rotate", help="request a rotation now (the rotate annotation)")
    rotate.add_argument("policy")
    common(rotate)
    rotate.set_defaults(handler=rotate_command)

    revoke = commands.add_parser("revoke-kid", help="revoke one key at once (the revoke-kid annotation)")
    revoke.add_argument("policy")
    revoke.add_argument("kid")
    revoke.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    common(revoke)
    revoke.set_defaults(handler=revoke_kid_command)

    token = commands.add_parser("revoke-token", help="revoke one token, or every token of its subject")
    revoke_token.add_arguments(token)
    token.set_defaults(handler=revoke_token.run)

    inspect = commands.add_parser("inspect", help="what a token is to the policy that signed it")
    inspect.add_argument("token", nargs="?", default="-", help="the JWT; '-' or nothing reads it from stdin")
    inspect.add_argument("--policy", help="the policy (default: the one in the namespace whose keys include the token's kid)")
    common(inspect)
    inspect.set_defaults(handler=inspect_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from urllib3.exceptions import HTTPError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"kubectl signingkeys {args.command}: {error}", file=sys.stderr)
        return 1
    except HTTPError as error:  # the API server did not answer: no traceback, the reason
        reason = getattr(error, "reason", None) or error
        print(f"kubectl signingkeys {args.command}: the API server did not answer ({reason})", file=sys.stderr)
        return 1


# -- reading ---------------------------------------------------------------------------------

def _get_policy(api_client, namespace: str, name: str) -> dict:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            raise CommandError(f"SigningKeyPolicy {name} not found in namespace {namespace} "
                               f"(kubectl get signingkeypolicies -n {namespace})") from None
        raise explain(error, "get", "signingkeypolicies.signingkeys.dev", namespace, name) from None


def _events(api_client, namespace: str, name: str) -> tuple[list[dict], str | None]:
    """The policy's Events, oldest first; or why they could not be read (a status is still
    worth showing without them)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        listed = client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=SigningKeyPolicy,involvedObject.name={name}")
    except ApiException as error:
        return [], str(explain(error, "list", "events", namespace))
    events = []
    for event in listed.items:
        moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        events.append({"time": format_time(moment) if moment else None,
                       "type": event.type, "reason": event.reason, "message": event.message, "count": event.count or 1})
    events.sort(key=lambda event: event["time"] or "")
    return events, None


def _spec(policy: dict) -> PolicySpec | None:
    try:
        return PolicySpec.from_resource(policy["metadata"]["name"], policy.get("spec"))
    except SpecError:
        return None


def _annotate(api_client, namespace: str, name: str, annotations: dict[str, str]) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": annotations}})
    except ApiException as error:
        raise explain(error, "patch", "signingkeypolicies.signingkeys.dev", namespace, name) from None


# -- status ----------------------------------------------------------------------------------

def _conditions(policy: dict) -> dict[str, dict]:
    return {condition["type"]: condition for condition in (policy.get("status") or {}).get("conditions") or []}


def describe(policy: dict, events: list[dict], events_error: str | None, now: datetime) -> dict:
    """Everything `status` shows, as data (what -o json and -o yaml print)."""
    status = policy.get("status") or {}
    timeline = build_timeline(status, now)
    spec = policy.get("spec") or {}
    return {
        "policy": policy["metadata"]["name"],
        "namespace": policy["metadata"]["namespace"],
        "now": format_time(now),
        "conditions": list(_conditions(policy).values()),
        "algorithm": spec.get("algorithm"),
        "rotation": spec.get("rotation"),
        "tokenLifetime": spec.get("tokenLifetime"),
        "clockSkew": spec.get("clockSkew"),
        "signingSecretName": status.get("signingSecretName"),
        "jwksConfigMapName": status.get("jwksConfigMapName"),
        "verificationSecretName": status.get("verificationSecretName"),
        "servedAt": status.get("servedAt") or [],
        "activeKid": status.get("activeKid"),
        "nextKid": status.get("nextKid"),
        "nextRotationTime": status.get("nextRotationTime"),
        "keys": [{"kid": row.kid, "state": row.state, "note": row.note,
                  "phases": [{"phase": span.phase, "start": format_time(span.start),
                              "end": None if span.open_ended else format_time(span.end)}
                             for span in row.spans]}
                 for row in timeline.rows],
        "events": events[-EVENTS_SHOWN:],
        **({"eventsError": events_error} if events_error else {}),
    }


def render_status(policy: dict, events: list[dict], events_error: str | None, now: datetime, width: int,
                  colour: bool) -> str:
    """The one screen: readiness and why, what the policy says, where the set is, the timeline,
    the last Events."""
    name, namespace = policy["metadata"]["name"], policy["metadata"]["namespace"]
    status, spec = policy.get("status") or {}, policy.get("spec") or {}
    conditions = _conditions(policy)
    lines = []
    ready = conditions.get("Ready")
    if ready is None:
        lines.append(f"SigningKeyPolicy {namespace}/{name}: not reconciled yet (no Ready condition): is the operator running?")
    else:
        word = "Ready" if ready["status"] == "True" else "NOT Ready"
        lines.append(f"SigningKeyPolicy {namespace}/{name}: {word} ({ready.get('reason')}: {ready.get('message', '')})")
    for kind in ("Degraded", "JWKSServed"):
        condition = conditions.get(kind)
        if condition and (kind != "Degraded" or condition["status"] == "True"):
            lines.append(f"  {kind}: {condition['status']} ({condition.get('reason')}: {condition.get('message', '')})")
    rotation = spec.get("rotation") or {}
    lines.append(f"  {spec.get('algorithm')}; rotates every {rotation.get('interval')}, a new key published "
                 f"{rotation.get('publishAhead')} before it signs; tokens live {spec.get('tokenLifetime')} "
                 f"(clockSkew {spec.get('clockSkew')})")
    if status.get("verificationSecretName"):
        lines.append(f"  signers mount Secret {status.get('signingSecretName')}; verifiers mount Secret "
                     f"{status['verificationSecretName']} (shared keys: no public JWK Set)")
    else:
        lines.append(f"  signers mount Secret {status.get('signingSecretName')}; the JWK Set is in ConfigMap "
                     f"{status.get('jwksConfigMapName')}")
    for served in status.get("servedAt") or []:
        kids = served.get("kids")
        seen = f"serves {len(kids)} keys" if kids is not None else f"failed: {served.get('error', 'no answer')}"
        lines.append(f"  served at {served['url']}: {seen}")
    lines.append("")
    if status.get("keys"):
        lines.append(render_text(build_timeline(status, now), width, colour))
    else:
        lines.append("no keys yet")
    lines.append("")
    if events_error:
        lines.append(f"Events: {events_error}")
    elif events:
        lines.append("Events:")
        for event in events[-EVENTS_SHOWN:]:
            moment = stamp(parse_time(event["time"]), now) if event["time"] else "?"
            count = f" (x{event['count']})" if event["count"] > 1 else ""
            lines.append(f"  {moment}  {event['type']:<7} {event['reason']}: {event['message']}{count}")
    else:
        lines.append("Events: none")
    return "\n".join(lines) + "\n"


def _colour_wanted(args: argparse.Namespace) -> bool:
    return not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def status_command(args: argparse.Namespace) -> int:
    api_client, namespace = connect(args.kubeconfig, args.namespace)
    with api_client:
        policy = _get_policy(api_client, namespace, args.policy)
        events, events_error = _events(api_client, namespace, args.policy)
    now = datetime.now(timezone.utc)
    if args.format == "svg":
        sys.stdout.write(render_svg(build_timeline(policy.get("status") or {}, now), f"{namespace}/{args.policy}"))
        return 0
    if args.output == "json":
        print(json.dumps(describe(policy, events, events_error, now), indent=2))
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(describe(policy, events, events_error, now), sort_keys=False))
    else:
        width = args.width or shutil.get_terminal_size((100, 24)).columns
        sys.stdout.write(render_status(policy, events, events_error, now, width, _colour_wanted(args)))
    return 0


# -- rotate and revoke-kid -------------------------------------------------------------------

def rotate_command(args: argparse.Namespace) -> int:
    api_client, namespace = connect(args.kubeconfig, args.namespace)
    with api_client:
        policy = _get_policy(api_client, namespace, args.policy)
        value = format_time(datetime.now(timezone.utc))
        _annotate(api_client, namespace, args.policy, {ROTATE_ANNOTATION: value})
    spec = _spec(policy)
    print(f"rotation requested ({ROTATE_ANNOTATION}={value})")
    if spec is None:
        print("the policy's spec is invalid, so nothing rotates until it is fixed (kubectl signingkeys status)")
        return 0
    ahead = spec.publish_ahead
    served = " and seen served at every spec.jwks.servedAt URL" if spec.served_at else ""
    print(f"the operator publishes a new key now; it signs publishAhead ({format_duration(ahead, compact=True)}) "
          f"after it is published{served}: at {(datetime.now(timezone.utc) + ahead).strftime('%H:%M:%S')} UTC at the "
          f"earliest. Watch it with: kubectl signingkeys status {args.policy} -n {namespace}")
    return 0


def revoke_kid_plan(policy: dict, kid: str) -> str:
    """What revoking ``kid`` will do, said before it is done. Raises CommandError for a kid that
    is not the policy's."""
    status = policy.get("status") or {}
    keys = {key["kid"]: key for key in status.get("keys") or []}
    name = policy["metadata"]["name"]
    if kid not in keys:
        known = ", ".join(f"{other} ({key['state']})" for other, key in keys.items()) or "none"
        raise CommandError(f"{kid} is not a key of SigningKeyPolicy {name}; its keys: {known}")
    key, spec = keys[kid], policy.get("spec") or {}
    lifetime, max_age = spec.get("tokenLifetime"), (spec.get("jwks") or {}).get("maxAge")
    if status.get("verificationSecretName"):
        the_set = f"the verification Secret {status['verificationSecretName']}"
        refetch = "verifiers refuse them once their mount of that Secret follows (the kubelet's sync, about a minute)"
        unknown = "verifiers refuse the fresh key's tokens until their mount has it"
    else:
        the_set = "the published and served set"
        refetch = f"verifiers refuse them once they refetch the set (it is served with max-age {max_age}; some clients cache longer)"
        unknown = "verifiers that cached the set refuse the fresh key's tokens until they refetch it"
    if key["state"] == "revoked":
        raise CommandError(f"{kid} is already revoked")
    if key["state"] == "active":
        return (f"{kid} signs now (since {key.get('activated', '?')}).\n"
                f"- It leaves {the_set} at once.\n"
                f"- A fresh key is made and signs at once, without being published ahead: {unknown}.\n"
                f"- Every token {kid} signed that has not expired (issued in the last {lifetime}) is refused: {refetch}.")
    if key["state"] == "next":
        return (f"{kid} has not signed yet (published {key.get('created', '?')}).\n"
                f"- It leaves {the_set} at once; no token is refused.\n"
                f"- A new next key is published and the rotation waits its publishAhead from then.")
    return (f"{kid} signed until {key.get('retired', '?')} and is still published for its tokens.\n"
            f"- It leaves {the_set} at once; the active key goes on signing.\n"
            f"- Its tokens that have not expired (issued up to {lifetime} before it retired) are refused: {refetch}.")


def revoke_kid_command(args: argparse.Namespace) -> int:
    api_client, namespace = connect(args.kubeconfig, args.namespace)
    with api_client:
        policy = _get_policy(api_client, namespace, args.policy)
        print(revoke_kid_plan(policy, args.kid))
        if not args.yes:
            if not sys.stdin.isatty():
                raise CommandError("not revoked: confirmation needed and stdin is not a terminal; pass --yes")
            answer = input(f"Revoke {args.kid} of {namespace}/{args.policy}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not revoked")
                return 1
        _annotate(api_client, namespace, args.policy, {REVOKE_ANNOTATION: args.kid})
    print(f"revoked: {REVOKE_ANNOTATION}={args.kid} set on {namespace}/{args.policy}; "
          f"follow it with kubectl signingkeys status {args.policy} -n {namespace}")
    return 0


# -- inspect ---------------------------------------------------------------------------------

def _segment(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def decode_unverified(token: str) -> tuple[dict, dict, int]:
    """Header, claims and the signature's length in bytes, read without verifying."""
    parts = token.split(".")
    if len(parts) != 3:
        raise CommandError("not a JWS compact token (three base64url parts joined by dots)")
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
        signature = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, TypeError):
        raise CommandError("the token's header or claims are not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise CommandError("the token's header and claims must be JSON objects")
    return header, claims, len(signature)


def _when(seconds: Any, now: float) -> str:
    if not isinstance(seconds, (int, float)):
        return repr(seconds)
    moment = format_time(datetime.fromtimestamp(seconds, timezone.utc))
    delta = timedelta(seconds=round(abs(seconds - now)))
    return f"{moment} ({'in ' if seconds > now else ''}{format_duration(delta, compact=True) or '0s'}{' ago' if seconds <= now else ''})"


def _revocations(api_client, namespace: str, policy: str) -> list[dict]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        listed = client.CustomObjectsApi(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, "tokenrevocations")
    except ApiException as error:
        raise explain(error, "list", "tokenrevocations.signingkeys.dev", namespace) from None
    return [item for item in listed.get("items", []) if (item.get("spec") or {}).get("policyName") == policy]


def matching_revocations(revocations: list[dict], claims: dict, spec: PolicySpec, now: datetime) -> list[str]:
    """The TokenRevocations that refuse a token with ``claims``, by name: those the operator has
    in force now, judged as verifiers judge the published entries (a revoked subject's token
    without ``iat`` is refused; an entry lasts clockSkew past the token's exp)."""
    matched = []
    for item in revocations:
        try:
            revocation = parse_revocation(item["metadata"]["name"], item.get("spec"))
        except RevocationError:
            continue  # the operator refuses it too: it revokes nothing
        compiled = compile_revocations([revocation], token_lifetime=spec.token_lifetime, clock_skew=spec.clock_skew, now=now)
        if compiled.entries.revokes(claims):
            matched.append(revocation.name)
    return matched


def inspect_command(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    token = (sys.stdin.read() if args.token == "-" else args.token).strip()
    header, claims, signature_bytes = decode_unverified(token)
    now = time.time()
    kid = header.get("kid")
    lines = [f"header: alg {header.get('alg')}, kid {kid}" + (f", typ {header['typ']}" if "typ" in header else ""),
             f"signature: {signature_bytes} bytes (not shown)"]
    for claim in ("iss", "sub", "aud", "jti"):
        if claim in claims:
            lines.append(f"{claim}: {json.dumps(claims[claim])}")
    for claim in ("iat", "nbf", "exp"):
        if claim in claims:
            lines.append(f"{claim}: {_when(claims[claim], now)}")
    others = sorted(set(claims) - {"iss", "sub", "aud", "jti", "iat", "nbf", "exp"})
    if others:
        lines.append(f"other claims: {', '.join(others)}")
    api_client, namespace = connect(args.kubeconfig, args.namespace)
    accepted = True
    with api_client:
        if args.policy:
            policies = [_get_policy(api_client, namespace, args.policy)]
        else:
            try:
                policies = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL)["items"]
            except ApiException as error:
                raise explain(error, "list", "signingkeypolicies.signingkeys.dev", namespace) from None
        owner = next((policy for policy in policies
                      if any(key["kid"] == kid for key in (policy.get("status") or {}).get("keys") or [])), None)
        if owner is None:
            lines.append(f"key: {kid} is not a key of SigningKeyPolicy {namespace}/{args.policy}" if args.policy
                         else f"key: no SigningKeyPolicy in namespace {namespace} has the key {kid}")
            print("\n".join(lines))
            return 1
        name = owner["metadata"]["name"]
        key = next(key for key in owner["status"]["keys"] if key["kid"] == kid)
        lines.append(f"key: {kid} of SigningKeyPolicy {namespace}/{name}, {key['state']}")
        spec = _spec(owner)
        try:
            if spec is None:
                raise revoke_token.Refusal("the policy's spec is invalid")
            revoke_token.policy_claims(api_client, namespace, spec, token)
            lines.append(f"signature: verifies against the policy's verification Secret {spec.verification_secret_name}"
                         if spec.is_shared_secret else "signature: verifies against the policy's published JWK Set (what the sidecar serves)")
        except revoke_token.Refusal as refusal:
            accepted = False
            lines.append(f"signature: does not verify: {refusal}")
        revoked = matching_revocations(_revocations(api_client, namespace, name), claims, spec,
                                       datetime.fromtimestamp(now, timezone.utc)) if spec else []
        if spec is None:
            lines.append("revoked: unknown (the policy's spec is invalid, so its revocations are not in force)")
        elif revoked:
            accepted = False
            lines.append(f"revoked: yes, by TokenRevocation {', '.join(revoked)}")
        else:
            lines.append("revoked: no TokenRevocation of the policy matches it")
    exp = claims.get("exp")
    skew = spec.clock_skew.total_seconds() if spec else 0
    if isinstance(exp, (int, float)) and exp + skew <= now:
        accepted = False
        lines.append(f"expired: {_when(exp, now)}; verifiers refuse it")
    lines.append("verdict: " + ("verifiers accept it" if accepted else "verifiers refuse it"))
    print("\n".join(lines))
    return 0 if accepted else 1
