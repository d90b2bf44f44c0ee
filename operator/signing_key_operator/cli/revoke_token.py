"""``signing-key-operator revoke-token``: revoke one token, or every token of its subject.

The token is verified against the keys the policy publishes (its JWKS ConfigMap) before
anything is created: a revocation is an emergency lever, and pulling it for a token that is not
ours, or is forged, would only add noise. Then:

* an already expired token (exp + clockSkew in the past) needs nothing: every verifier refuses
  it already; nothing is created;
* with a ``jti``: a TokenRevocation of that jti until the token's exp (named after the jti's
  digest, so running the command twice creates one object). A jti that is not a string (RFC
  7519 makes it one) is refused, never revoked by its string form, which nothing would match;
* without a ``jti``, or with ``--by-subject``: every token of its ``sub`` issued up to now. That
  is wider than one token, so it needs ``--by-subject`` to be said out loud.

Exit codes: 0 revoked (or nothing to do), 1 the token or the policy is not usable, 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import sys
import time
from datetime import datetime, timezone
from typing import Any

from ..core.jwks import InvalidJwkSet, parse_jwk_set
from ..core.keys import PUBLIC_KEY_ALGORITHMS
from ..core.spec import PolicySpec, SpecError
from .kube import GROUP, VERSION, CommandError, api_message, connect


class Refusal(Exception):
    """Why nothing was revoked; printed as is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", nargs="?", default="-", help="the JWT; '-' or nothing reads it from stdin")
    parser.add_argument("--policy", required=True, help="the SigningKeyPolicy whose keys signed the token")
    parser.add_argument("--namespace", "-n", help="namespace of the policy (default: the kubeconfig context's, else default)")
    parser.add_argument("--reason", default="", help="why, recorded in the TokenRevocation")
    parser.add_argument("--by-subject", action="store_true", help="revoke every token of the token's subject issued up to now")
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, else ~/.kube/config)")


def run(args: argparse.Namespace) -> int:
    token = (sys.stdin.read() if args.token == "-" else args.token).strip()
    if not token:
        print("revoke-token: no token given (argument or stdin)", file=sys.stderr)
        return 2
    try:
        api_client, namespace = connect(args.kubeconfig, args.namespace)
    except CommandError as error:
        print(f"revoke-token: {error}", file=sys.stderr)
        return 1
    with api_client:
        try:
            message = revoke(api_client, namespace, args.policy, token, reason=args.reason, by_subject=args.by_subject)
        except Refusal as refusal:
            print(f"revoke-token: {refusal}", file=sys.stderr)
            return 1
    print(message)
    return 0


def revoke(api_client, namespace: str, policy_name: str, token: str, *, reason: str = "", by_subject: bool = False,
           now: float | None = None) -> str:
    """Verify ``token`` against the policy's published keys and create its TokenRevocation;
    returns what was done, for the user. Raises :class:`Refusal` when nothing may be done."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    objects = client.CustomObjectsApi(api_client)
    try:
        policy = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "signingkeypolicies", policy_name)
    except ApiException as error:
        if error.status == 404:
            raise Refusal(f"SigningKeyPolicy {policy_name} not found in namespace {namespace}") from None
        raise
    try:
        spec = PolicySpec.from_resource(policy_name, policy.get("spec"))
    except SpecError as error:
        raise Refusal(f"SigningKeyPolicy {policy_name} has an invalid spec ({error})") from None
    claims = policy_claims(api_client, namespace, spec, token)
    now = time.time() if now is None else now
    exp = claims.get("exp")
    skew = spec.clock_skew.total_seconds()
    if isinstance(exp, (int, float)) and exp + skew <= now:
        return (f"the token expired at {_iso(exp)} (+{skew:g}s clockSkew): every verifier refuses it already; "
                "nothing to revoke, no TokenRevocation created")
    jti, subject = claims.get("jti"), claims.get("sub")
    if not by_subject and jti is not None and not isinstance(jti, str):
        # Never its string form: 123 and "123" are different jtis, and a revocation of "123" is not
        # matched against a numeric jti (the Python verifier refuses such a token outright).
        way_out = (f"--by-subject revokes every token of subject {subject!r} issued up to now"
                   if isinstance(subject, str) and subject
                   else "revoke its key (kubectl annotate skp/NAME signingkeys.dev/revoke-kid=<kid>)")
        raise Refusal("the token's jti is not a string (RFC 7519 makes a jti a case-sensitive string), so no "
                      f"revocation by jti can match it and none was created; {way_out}")
    if by_subject or jti is None:
        if not isinstance(subject, str) or not subject:
            raise Refusal("the token has neither a jti nor a sub claim: it cannot be revoked on its own; revoke its key "
                          "(kubectl annotate skp/NAME signingkeys.dev/revoke-kid=<kid>)")
        if not by_subject:
            raise Refusal(f"the token has no jti, so it cannot be revoked alone. It can be revoked by subject: "
                          f"--by-subject revokes every token of subject {subject!r} issued up to now")
        issued_before = math.floor(now) + 1  # covers a token issued this very second
        name = f"{policy_name}-sub-{_digest(subject)}-{issued_before}"
        spec_body = {"policyName": policy_name, "subject": subject, "issuedBefore": _iso(issued_before)}
        what = f"every token of subject {subject!r} issued before {_iso(issued_before)}"
    else:
        if not isinstance(exp, (int, float)):
            raise Refusal("the token has a jti but no exp: a revocation must end, and this token never expires; "
                          "revoke by subject (--by-subject) or revoke its key")
        name = f"{policy_name}-jti-{_digest(jti)}"
        spec_body = {"policyName": policy_name, "jti": jti, "expiresAt": _iso(math.ceil(exp))}
        what = f"the token with jti {jti!r} (expires {_iso(exp)})"
    if reason:
        spec_body["reason"] = reason
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TokenRevocation", "metadata": {"name": name, "namespace": namespace},
            "spec": spec_body}
    try:
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, "tokenrevocations", body)
    except ApiException as error:
        if error.status == 409:
            return f"already revoked: TokenRevocation {namespace}/{name} exists for {what}"
        if error.status == 422:
            raise Refusal(f"the API server refused the TokenRevocation: {api_message(error)}") from None
        raise
    return f"revoked {what}: TokenRevocation {namespace}/{name} created (kubectl get tokrev -n {namespace} {name})"


def verified_claims(token: str, published: str, hmac_algorithm: str | None = None) -> dict[str, Any]:
    """The claims of ``token`` verified against ``published`` (the policy's ``jwks.json``), which
    is checked first by the rules the sidecar serves by: a set it would refuse is refused here
    too, with its reason, rather than handed to joserfc (a JSON array as kty made it raise
    TypeError). With ``hmac_algorithm`` (an HS policy) ``published`` is its verification
    Secret's oct set instead, and only that algorithm is accepted."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    try:
        if hmac_algorithm is not None:
            keys, algorithms = KeySet.import_key_set(_shared_key_set(published)), [hmac_algorithm]
        else:
            keys, algorithms = KeySet.import_key_set(parse_jwk_set(published).to_dict()), list(PUBLIC_KEY_ALGORITHMS)
    except InvalidJwkSet as error:
        raise Refusal(f"the policy's published JWK Set is invalid ({error}); the sidecar does not serve it either") from None
    try:
        decoded = jwt.decode(token, keys, algorithms=algorithms)
    except (JoseError, ValueError) as error:
        # The class name and joserfc's short code only: never the token itself.
        raise Refusal(f"the token does not verify against the policy's published keys ({type(error).__name__}); "
                      "it was not signed by this policy, or its key is no longer published") from None
    return dict(decoded.claims)


def policy_claims(api_client, namespace: str, spec: PolicySpec, token: str) -> dict[str, Any]:
    """The claims of ``token`` verified against the keys the policy gives its verifiers."""
    return verified_claims(token, published_jwks(api_client, namespace, spec), spec.algorithm if spec.is_shared_secret else None)


def published_jwks(api_client, namespace: str, spec: PolicySpec) -> str:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    if spec.is_shared_secret:
        # Its keys verify as well as they sign, so they are where its verifiers read them: the
        # verification Secret, which takes `get` on that Secret (what a verifier's Role grants).
        name = spec.verification_secret_name
        try:
            secret = client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                raise Refusal(f"Secret {name} (the policy's verification keys) not found: is the operator running?") from None
            if error.status == 403:
                raise Refusal(f"checking an {spec.algorithm} token takes the policy's shared keys: your identity needs "
                              f"the 'get' verb on Secret {name} in namespace {namespace} (RBAC)") from None
            raise
        return base64.b64decode((secret.data or {}).get("jwks.json", "")).decode("utf-8", errors="replace")
    try:
        configmap = client.CoreV1Api(api_client).read_namespaced_config_map(spec.jwks_config_map_name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise Refusal(f"ConfigMap {spec.jwks_config_map_name} (the policy's JWKS) not found: is the operator running?") from None
        raise
    return (configmap.data or {}).get("jwks.json") or ""


def _shared_key_set(published: str) -> dict[str, Any]:
    """An HS policy's verification set, checked: a JSON object of oct keys with a kid each."""
    try:
        document = json.loads(published)
        keys = document["keys"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and k.get("kty") == "oct" and k.get("kid") for k in keys):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise Refusal("the policy's verification Secret does not hold a set of oct keys with kids") from None
    return document


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
