"""How the operator's state looks as Kubernetes objects, and back.

One Secret per key, named `<policy>-key-<serial>`, holds the private key (`private.pem`,
PKCS#8; for an HMAC key `key`, its raw bytes), its `kid` and `alg`, and everything the lifecycle
needs as labels and annotations (design invariant 6: losing the policy's status loses nothing).
Secrets are written as `data` (base64), never `stringData`: an HMAC key is bytes, not text.

The kid is an annotation, not a label: a label value must start and end with an alphanumeric
character, which a base64url thumbprint need not.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..core.keys import KeyMaterial, KeyMaterialError, b64url, is_hmac_algorithm, load_key
from ..core.planner import KeyReason, KeyRecord, KeyState, SigningSecretView, key_secret_name

PREFIX = "signingkeys.dev"
POLICY_LABEL = f"{PREFIX}/policy"
STATE_LABEL = f"{PREFIX}/state"
SERIAL_LABEL = f"{PREFIX}/serial"
COMPONENT_LABEL = f"{PREFIX}/component"
KEY_SECRET_TYPE = f"{PREFIX}/signing-key"
SIGNING_SECRET_TYPE = f"{PREFIX}/active-signing-key"
VERIFICATION_SECRET_TYPE = f"{PREFIX}/verification-keys"
MAX_AGE_ANNOTATION = f"{PREFIX}/jwks-max-age"
ROTATE_HANDLED_ANNOTATION = f"{PREFIX}/rotate-handled"
REVOKE_HANDLED_ANNOTATION = f"{PREFIX}/revoke-handled"
SIGNING_SINCE_ANNOTATION = f"{PREFIX}/signing-since"
LIFETIMES_KEY = "lifetimes.json"
"""The signing Secret's key for the lifetimes signers must respect (PolicySpec.signer_lifetimes)."""
REPLACED_KID_ANNOTATION = f"{PREFIX}/replaced-kid"
HMAC_KEY_TEXT_KEY = "key.b64url"
"""The HMAC signing Secret's key as base64url text, beside ``key`` (the raw bytes)."""
VERIFICATION_SET_KEY = "jwks.json"
"""The verification Secret's key for the oct JWK Set verifiers of an HMAC policy read."""

_TIME_FIELDS = ("created", "activate_at", "activated", "retired", "removal_due", "revoked", "first_served")


def _annotation(field: str) -> str:
    return f"{PREFIX}/{field.replace('_', '-')}"


def format_time(value: datetime) -> str:
    """RFC 3339 in whole seconds (`2026-12-01T06:59:46Z`), truncated as Kubernetes' own
    metav1.Time is: the form of every time a user reads in status, conditions and Events."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_record_time(value: datetime) -> str:
    """RFC 3339 with the microseconds kept, for the lifecycle record in a key Secret's
    annotations: the planner decides from these, and a time that came back rounded would move
    a key's publication or retention by up to a second."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class BrokenKeySecret(Exception):
    """A key Secret that cannot be read back. The message names what is wrong, never the data."""


@dataclass(frozen=True)
class StoredKey:
    record: KeyRecord
    material: KeyMaterial
    secret_name: str
    resource_version: str


def owner_reference(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": policy["apiVersion"],
        "kind": policy["kind"],
        "name": policy["metadata"]["name"],
        "uid": policy["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: dict[str, Any], policy: dict[str, Any]) -> bool:
    """Whether ``policy`` is ``obj``'s controller. Only such an object is the policy's to
    change or delete: a name alone proves nothing (a user's ConfigMap, another policy's
    Secret, one left by an earlier policy of the same name all share names with what a policy
    would make)."""
    uid = policy["metadata"]["uid"]
    return any(o.get("controller") and o.get("uid") == uid for o in obj["metadata"].get("ownerReferences") or [])


@dataclass(frozen=True)
class NameConflict:
    """An object a policy would write exists and belongs to someone else; the policy leaves it
    as it is and says so."""

    kind: str
    name: str
    owner: str
    """Who owns it, for the message: "Kind/name", or "no owner"."""
    field: str
    """The spec field that names it, or "" for a key Secret (named from the policy and a serial)."""

    def __str__(self) -> str:
        rename = f"{self.field} names another object" if self.field else "it is deleted"
        return (
            f"{self.kind} {self.name} exists and is not owned by this policy (owner: {self.owner}); "
            f"it is left as it is and nothing that needs it is written until it is deleted or {rename}"
        )


def name_conflict(kind: str, obj: dict[str, Any] | None, policy: dict[str, Any], field: str = "") -> NameConflict | None:
    """The conflict ``obj`` (the ``kind`` object as read, None when absent) makes for
    ``policy``, or None when it is absent or the policy's own."""
    if obj is None or is_owned_by(obj, policy):
        return None
    owners = obj["metadata"].get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        described = "no owner"
    else:
        described = f"{owner.get('kind')}/{owner.get('name')}"
        if owner.get("kind") == policy["kind"] and owner.get("name") == policy["metadata"]["name"]:
            described += " (an earlier policy of this name; the garbage collector removes it)"
    return NameConflict(kind, obj["metadata"]["name"], described, field)


def policy_labels(policy_name: str, component: str) -> dict[str, str]:
    return {
        POLICY_LABEL: policy_name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": "signing-key-operator",
    }


def key_metadata(record: KeyRecord) -> tuple[dict[str, str], dict[str, str]]:
    labels = {STATE_LABEL: record.state.value, SERIAL_LABEL: str(record.serial)}
    annotations = {
        _annotation("kid"): record.kid,
        _annotation("alg"): record.alg,
        _annotation("reason"): record.reason.value,
        _annotation("emergency"): "true" if record.emergency else "false",
    }
    for field in _TIME_FIELDS:
        value = getattr(record, field)
        if value is not None:
            annotations[_annotation(field)] = format_record_time(value)
    if record.rotate_request is not None:
        annotations[_annotation("rotate_request")] = record.rotate_request
    return labels, annotations


def _data(files: dict[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(value).decode() for name, value in files.items()}


def _key_file(alg: str) -> str:
    """The data key holding the key itself: PEM text, or an HMAC key's raw bytes."""
    return "key" if is_hmac_algorithm(alg) else "private.pem"


def key_secret(policy: dict[str, Any], record: KeyRecord, material: KeyMaterial) -> dict[str, Any]:
    name = policy["metadata"]["name"]
    labels, annotations = key_metadata(record)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": KEY_SECRET_TYPE,
        "metadata": {
            "name": key_secret_name(name, record.serial),
            "namespace": policy["metadata"]["namespace"],
            "labels": {**policy_labels(name, "key"), **labels},
            "annotations": annotations,
            "ownerReferences": [owner_reference(policy)],
        },
        "data": _data({
            "kid": material.kid.encode(),
            "alg": material.alg.encode(),
            _key_file(material.alg): material.private,
            **({} if material.is_shared_secret else {"public.jwk.json": json.dumps(material.public_jwk(), sort_keys=True).encode()}),
        }),
    }


def with_record(secret: dict[str, Any], record: KeyRecord) -> dict[str, Any]:
    """The same Secret (same resourceVersion, so the write is guarded) carrying `record`."""
    labels, annotations = key_metadata(record)
    metadata = dict(secret["metadata"])
    metadata["labels"] = {**metadata.get("labels", {}), **labels}
    kept = {k: v for k, v in metadata.get("annotations", {}).items() if not k.startswith(PREFIX + "/")}
    metadata["annotations"] = {**kept, **annotations}
    return {**secret, "metadata": metadata}


def _decoded(secret: dict[str, Any], key: str) -> bytes:
    data = secret.get("data") or {}
    if key not in data:
        raise BrokenKeySecret(f"data.{key} is missing")
    try:
        return base64.b64decode(data[key], validate=True)
    except ValueError:
        raise BrokenKeySecret(f"data.{key} is not valid base64") from None


def read_key_secret(secret: dict[str, Any]) -> StoredKey:
    metadata = secret["metadata"]
    name = metadata["name"]
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    try:
        fields: dict[str, Any] = {
            "serial": int(labels[SERIAL_LABEL]),
            "kid": annotations[_annotation("kid")],
            "alg": annotations[_annotation("alg")],
            "state": KeyState(labels[STATE_LABEL]),
            "reason": KeyReason(annotations[_annotation("reason")]),
            "emergency": annotations.get(_annotation("emergency")) == "true",
            "rotate_request": annotations.get(_annotation("rotate_request")),
        }
        for field in _TIME_FIELDS:
            text = annotations.get(_annotation(field))
            fields[field] = parse_time(text) if text else None
        record = KeyRecord(**fields)
    except KeyError as missing:
        raise BrokenKeySecret(f"Secret {name}: label or annotation {missing} is missing") from None
    except ValueError as bad:
        raise BrokenKeySecret(f"Secret {name}: bad lifecycle metadata ({bad})") from None
    if name != key_secret_name(labels.get(POLICY_LABEL, ""), record.serial):
        raise BrokenKeySecret(f"Secret {name}: name does not match its policy and serial labels")
    key_file = _key_file(record.alg)
    try:
        material = load_key(_decoded(secret, key_file), record.alg)
    except BrokenKeySecret as broken:
        raise BrokenKeySecret(f"Secret {name}: {broken}") from None
    except KeyMaterialError as bad:
        raise BrokenKeySecret(f"Secret {name}: data.{key_file} is unusable ({bad})") from None
    if material.kid != record.kid:
        raise BrokenKeySecret(f"Secret {name}: data.{key_file} does not match kid {record.kid} (tampered?)")
    if _decoded(secret, "kid").decode(errors="replace") != record.kid:
        raise BrokenKeySecret(f"Secret {name}: data.kid does not match its kid annotation")
    return StoredKey(record, material, name, metadata["resourceVersion"])


def signing_secret(
    policy: dict[str, Any], secret_name: str, material: KeyMaterial, serial: int,
    since: datetime, replaced: dict[str, Any] | None, lifetimes: bytes,
) -> dict[str, Any]:
    """The signing Secret holding ``material`` from ``since`` on, in place of ``replaced`` (the
    Secret as it is now, if any): the planner counts the replaced key's retention from then.
    ``lifetimes`` is ``lifetimes.json`` (:meth:`~..core.spec.PolicySpec.signer_lifetimes`): how
    long signers may make tokens live, beside the key they sign with."""
    name = policy["metadata"]["name"]
    annotations = {_annotation("kid"): material.kid, SERIAL_LABEL: str(serial), SIGNING_SINCE_ANNOTATION: format_record_time(since)}
    before = signing_view(replaced)
    if before is not None and before.kid == material.kid:
        # Repaired, not moved (its content was edited): signers moved when it last changed key.
        if before.since is not None:
            annotations[SIGNING_SINCE_ANNOTATION] = format_record_time(before.since)
        if before.replaced_kid is not None:
            annotations[REPLACED_KID_ANNOTATION] = before.replaced_kid
    elif before is not None and before.kid is not None:
        annotations[REPLACED_KID_ANNOTATION] = before.kid
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SIGNING_SECRET_TYPE,
        "metadata": {
            "name": secret_name,
            "namespace": policy["metadata"]["namespace"],
            "labels": policy_labels(name, "signing"),
            "annotations": annotations,
            "ownerReferences": [owner_reference(policy)],
        },
        "data": _data({
            "kid": material.kid.encode(),
            "alg": material.alg.encode(),
            _key_file(material.alg): material.private,
            # The same key as text, for signers configured from an environment variable or a
            # config file: base64url without padding, as in the JWK's `k`.
            **({HMAC_KEY_TEXT_KEY: b64url(material.private).encode()} if material.is_shared_secret else {}),
            LIFETIMES_KEY: lifetimes,
        }),
    }


def verification_secret(policy: dict[str, Any], secret_name: str, jwk_set: bytes) -> dict[str, Any]:
    """The Secret verifiers of an HMAC policy mount: ``jwks.json``, the next, active and retired
    keys as ``oct`` JWKs (core.jwks.render_shared_key_set). A Secret, not a ConfigMap: every key in
    it signs as well as it verifies."""
    name = policy["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": VERIFICATION_SECRET_TYPE,
        "metadata": {
            "name": secret_name,
            "namespace": policy["metadata"]["namespace"],
            "labels": policy_labels(name, "verification"),
            "ownerReferences": [owner_reference(policy)],
        },
        "data": _data({VERIFICATION_SET_KEY: jwk_set}),
    }


def secret_is_current(secret: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    return secret is not None and (secret.get("data") or {}) == desired["data"]


def signing_view(secret: dict[str, Any] | None) -> SigningSecretView | None:
    """What the signing Secret says, for the planner; an unreadable part is left out (a
    tampered Secret is rewritten anyway, since it no longer matches the active key)."""
    if secret is None:
        return None
    try:
        kid: str | None = _decoded(secret, "kid").decode()
    except (BrokenKeySecret, UnicodeDecodeError):
        kid = None
    annotations = secret["metadata"].get("annotations") or {}
    try:
        since = parse_time(annotations[SIGNING_SINCE_ANNOTATION])
    except (KeyError, ValueError):
        since = None
    if since is not None and since.tzinfo is None:
        since = None
    return SigningSecretView(kid=kid, since=since, replaced_kid=annotations.get(REPLACED_KID_ANNOTATION))


def signing_lifetimes(secret: dict[str, Any] | None) -> bytes:
    """The ``lifetimes.json`` a signing Secret holds now (empty when it has none, as a Secret
    written before signers were told lifetimes)."""
    try:
        return _decoded(secret, LIFETIMES_KEY) if secret is not None else b""
    except BrokenKeySecret:
        return b""


def signing_secret_holds(secret: dict[str, Any] | None, material: KeyMaterial) -> bool:
    """Whether the signing Secret holds exactly this key (kid, alg and private key)."""
    if secret is None:
        return False
    try:
        return (
            _decoded(secret, "kid").decode() == material.kid
            and _decoded(secret, "alg").decode() == material.alg
            and _decoded(secret, _key_file(material.alg)) == material.private
            and (not material.is_shared_secret
                 or _decoded(secret, HMAC_KEY_TEXT_KEY) == b64url(material.private).encode())
        )
    except (BrokenKeySecret, UnicodeDecodeError):
        return False


def signing_secret_is_current(secret: dict[str, Any] | None, material: KeyMaterial, lifetimes: bytes) -> bool:
    """Whether the signing Secret holds this key and tells signers these lifetimes."""
    return signing_secret_holds(secret, material) and signing_lifetimes(secret) == lifetimes


def published_configmap(
    policy: dict[str, Any], name: str, component: str, file_name: str, body: bytes, max_age_seconds: int
) -> dict[str, Any]:
    """A ConfigMap the sidecar serves from: the document under ``file_name`` (``jwks.json`` or
    ``revocations.json``) and the policy's max-age beside it (see sidecar/sources.py)."""
    policy_name = policy["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": policy["metadata"]["namespace"],
            "labels": policy_labels(policy_name, component),
            "annotations": {MAX_AGE_ANNOTATION: str(max_age_seconds)},
            "ownerReferences": [owner_reference(policy)],
        },
        "data": {file_name: body.decode(), "max-age": str(max_age_seconds)},
    }


def configmap_is_current(configmap: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if configmap is None:
        return False
    return (
        configmap.get("data") == desired["data"]
        and (configmap["metadata"].get("annotations") or {}).get(MAX_AGE_ANNOTATION)
        == desired["metadata"]["annotations"][MAX_AGE_ANNOTATION]
    )
