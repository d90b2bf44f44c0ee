"""Where the sidecar gets the published JWK Set from.

What the operator publishes (the contract with the writer side)
----------------------------------------------------------------
One ConfigMap per policy with:

* data key ``jwks.json`` (``--key``): the canonical JWK Set from
  :func:`signing_key_operator.core.jwks.render_jwk_set`, served byte for byte;
* annotation ``signingkeys.dev/jwks-max-age``: the policy's ``spec.jwks.maxAge`` in seconds,
  as an integer string (what the watch source reads);
* data key ``max-age``: the same number, so that it also appears as a file next to
  ``jwks.json`` in a mounted volume (what the file source reads; annotations are not projected
  into volumes).

The revocation ConfigMap (``<policy>-revocations``, served at ``/revocations.json``) follows the
same contract with the data key ``revocations.json``; each source reads one ConfigMap, so a
sidecar serving both runs two sources of the same kind.

The watch source prefers the annotation and falls back to the ``max-age`` data key. A value that
is not an integer from 0 to one year, of any length, is ignored with a warning and counted in
``signing_key_sidecar_{jwks,revocations}_max_age_ignored_total`` (the set itself is still
applied: a bad max-age must never hold back a revocation). ``--max-age`` overrides both; 60 s if
none is given.

Sources
-------
:class:`FileSource` (``--jwks-file``) reads the ConfigMap mounted as a volume. The kubelet
updates such a volume atomically: it writes a new timestamped directory ``..2024_..._..``,
points a ``..data_tmp`` symlink at it, renames that over ``..data`` and removes the old
directory; ``jwks.json`` itself is a symlink to ``..data/jwks.json``. The source polls
``os.stat`` + ``os.path.realpath`` every ``poll_interval`` (0.25 s) and reloads when either
changes, which catches the symlink swap and a plain rewrite of a regular file alike, with no
inotify dependency. Both files are read through the resolved directory, so ``jwks.json`` and
``max-age`` always come from the same kubelet snapshot. A change must be stable over two polls
before it is read (a writer half way through a plain rewrite is not mistaken for bad content),
and the file is re-read every ``resync_interval`` in case a rewrite kept size and mtime. Note:
a ``subPath`` mount never updates (a Kubernetes limitation); mount the whole volume. Volumes
lag the ConfigMap by the kubelet sync period (often a minute or more).

:class:`ConfigMapWatchSource` (``--configmap NAMESPACE/NAME``) lists and watches exactly one
ConfigMap through the API (field selector ``metadata.name=NAME``, so RBAC can be ``get``,
``list``, ``watch`` restricted by ``resourceNames`` to that one ConfigMap) and sees changes
within a second. It uses the official ``kubernetes`` client, whose blocking watch runs in one
daemon thread; events hop onto the event loop with ``call_soon_threadsafe``. Why the official
client rather than aiohttp against the API server: its config loaders already implement every
way a pod or a kubeconfig authenticates (in-cluster ServiceAccount token with periodic re-read
of the projected, rotating token; exec plugins; client certificates; proxies), and getting any
of these subtly wrong would silently stop updates. One thread for one watch is cheap. The watch
resumes from the last resourceVersion (bookmarks on), relists on ``410 Gone``, and reconnects
with capped, jittered exponential backoff on any error. (A kubeconfig with embedded
``*-data`` credentials makes the client write them to temporary files; in-cluster config
writes nothing, so the sidecar still runs on a read-only root file system.) The list and watch
requests go through ``ApiClient.param_serialize``/``call_api`` (same authentication, same
errors) rather than the generated ``CoreV1Api``, whose first use imports some 250 pydantic models
and costs about 22 MiB of RSS for one GET path; events are read as plain dicts.

Both sources feed content through :func:`apply_published`: the one place that turns "data
keys + annotations" into an offer to :class:`~.state.PublishedState`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..core.jwks import MAX_JWK_SET_BYTES
from .settings import Settings
from .state import Outcome, PublishedState

if TYPE_CHECKING:  # the kubernetes client is only needed by the watch source
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

MAX_AGE_ANNOTATION = "signingkeys.dev/jwks-max-age"
MAX_AGE_DATA_KEY = "max-age"
_MAX_AGE_LIMIT = 31536000  # one year, the practical ceiling of max-age (RFC 9111 caches)


class Source(Protocol):
    """Something that keeps offering the published content to the state until cancelled."""

    description: str

    async def run(self, state: PublishedState) -> None: ...


def parse_max_age(value: str | bytes | None) -> int | None:
    """The published max-age in seconds, None if absent; ValueError (saying why, the value cut
    short) if it is not an integer from 0 to one year. The digits are counted before ``int()``
    sees them: Python refuses ``int()`` of more than 4300 digits, and that ValueError escaping
    from here dropped the whole update."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value.strip()
    if not text:
        return None
    significant = text.lstrip("0") or "0"
    if text.isascii() and text.isdigit() and len(significant) <= len(str(_MAX_AGE_LIMIT)):
        seconds = int(significant)
        if seconds <= _MAX_AGE_LIMIT:
            return seconds
    shown = repr(text) if len(text) <= 32 else f"{text[:32]!r}... ({len(text)} characters)"
    raise ValueError(f"{shown} is not an integer 0..{_MAX_AGE_LIMIT}")


def _published_max_age(data: Mapping[str, str | bytes], annotations: Mapping[str, str]) -> tuple[int | None, str | None]:
    """The max-age published with a document (the annotation, else the data key; None if
    neither holds a valid one), and what was ignored as invalid, for the state to report."""
    max_age, ignored = None, []
    for where, value in (
        (f"annotation {MAX_AGE_ANNOTATION}", annotations.get(MAX_AGE_ANNOTATION)),
        (f"data key {MAX_AGE_DATA_KEY}", data.get(MAX_AGE_DATA_KEY)),
    ):
        try:
            max_age = parse_max_age(value)
        except ValueError as error:
            ignored.append(f"{where}: {error}")
            continue
        if max_age is not None:
            break
    return max_age, "; ".join(ignored) or None


def apply_published(
    state: PublishedState,
    data: Mapping[str, str | bytes] | None,
    annotations: Mapping[str, str] | None = None,
    *,
    key: str = "jwks.json",
    origin: str = "",
) -> Outcome | None:
    """Apply what the operator published: ``data`` is the ConfigMap's data (or the files of the
    mounted volume), None if the ConfigMap/file is gone. Returns None when the source is gone."""
    if data is None:
        state.source_missing(origin)
        return None
    if key not in data:
        have = ", ".join(sorted(data)) or "none"
        state.refuse("missing_data_key", f"no data key {key!r} (have: {have})", origin=origin)
        return Outcome.REFUSED
    body = data[key]
    if isinstance(body, str):
        body = body.encode("utf-8")
    max_age, invalid_max_age = _published_max_age(data, annotations or {})
    return state.offer(body, max_age=max_age, origin=origin, invalid_max_age=invalid_max_age)


def apply_configmap(
    state: PublishedState, configmap: Mapping[str, Any] | None, *, key: str = "jwks.json", origin: str = ""
) -> Outcome | None:
    """Apply a ConfigMap as the API returns it (a JSON dict); None means it was deleted."""
    if configmap is None:
        return apply_published(state, None, key=key, origin=origin)
    meta = configmap.get("metadata") or {}
    data: dict[str, str | bytes] = dict(configmap.get("data") or {})
    for name, b64 in (configmap.get("binaryData") or {}).items():
        try:
            data.setdefault(name, base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError, TypeError):
            log.warning("ignoring undecodable binaryData key %r in %s", name, origin)
    return apply_published(state, data, meta.get("annotations") or {}, key=key, origin=origin)


# --------------------------------------------------------------------------------------------
# Mounted file


class FileSource:
    """Polls a file (usually ``<ConfigMap volume>/jwks.json``) for the kubelet's atomic symlink
    swap and for plain rewrites. No writes, no extra dependencies."""

    def __init__(self, path: str | os.PathLike[str], settings: Settings | None = None, *, data_key: str | None = None) -> None:
        self.settings = settings or Settings()
        self.data_key = data_key or self.settings.data_key
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, self.data_key)
        self.path = path
        self.description = f"file {self.path}"

    def _fingerprint(self) -> tuple[Any, ...] | None:
        """What changes whenever the content may have changed; None if the file is missing."""
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except FileNotFoundError:
            return None
        try:
            ma = os.stat(os.path.join(os.path.dirname(real), MAX_AGE_DATA_KEY))
            ma_fp: tuple[int, ...] | None = (ma.st_ino, ma.st_size, ma.st_mtime_ns, ma.st_ctime_ns)
        except OSError:
            ma_fp = None
        return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, ma_fp)

    def _read(self) -> tuple[dict[str, bytes] | None, tuple[Any, ...] | None]:
        """Read the set and its sibling max-age from one resolved directory (one kubelet
        snapshot). Retries if the files changed while being read."""
        for _ in range(5):
            before = self._fingerprint()
            if before is None:
                return None, None
            real = before[0]
            try:
                with open(real, "rb") as f:
                    body = f.read(MAX_JWK_SET_BYTES + 1)
            except FileNotFoundError:
                continue  # the kubelet removed the old snapshot between realpath and open
            data = {self.data_key: body}
            try:
                with open(os.path.join(os.path.dirname(real), MAX_AGE_DATA_KEY), "rb") as f:
                    data[MAX_AGE_DATA_KEY] = f.read(64)
            except OSError:
                pass
            if self._fingerprint() == before:
                return data, before
        raise OSError(f"{self.path} keeps changing while being read")

    async def run(self, state: PublishedState) -> None:
        s = self.settings
        applied: object = object()  # fingerprint of the content last applied
        previous: object = object()  # fingerprint seen at the previous poll
        last_read = float("-inf")
        while True:
            try:
                fp = await asyncio.to_thread(self._fingerprint)
                now = time.monotonic()
                stable = fp == previous
                previous = fp
                due = now - last_read >= s.resync_interval
                if fp is None:
                    if applied is not None:
                        apply_published(state, None, origin=self.description)
                        applied = None
                elif (stable and fp != applied) or (due and fp == applied):
                    data, read_fp = await asyncio.to_thread(self._read)
                    last_read = now
                    apply_published(state, data, key=self.data_key, origin=self.description)
                    applied = read_fp
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # permission denied, is a directory, I/O error, ...
                state.refuse("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}", origin=self.description)
                applied = previous
                last_read = time.monotonic()
            await asyncio.sleep(s.poll_interval)


# --------------------------------------------------------------------------------------------
# ConfigMap watch through the API


def load_api_client(kubeconfig: str | None = None) -> ApiClient:
    """An ApiClient from ``kubeconfig`` if given, else in-cluster config, else the default
    kubeconfig. Never touches the client's process-global default configuration."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        return config.new_client_from_config(persist_config=False)
    return client.ApiClient(configuration=cfg)


class ConfigMapWatchSource:
    """List + watch one ConfigMap through the API (see the module docstring).

    ``api_client`` is a ``kubernetes.client.ApiClient`` (point it at any cluster, e.g. a test
    kube-apiserver); the caller owns it and closes it.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        api_client: ApiClient,
        settings: Settings | None = None,
        *,
        data_key: str | None = None,
    ) -> None:
        if not namespace or not name:
            raise ValueError("namespace and name are required")
        self.namespace = namespace
        self.name = name
        self.api_client = api_client
        self.settings = settings or Settings()
        self.data_key = data_key or self.settings.data_key
        self.description = f"configmap {namespace}/{name}"
        self._watch: Any = None

    async def run(self, state: PublishedState) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        finished: asyncio.Future[None] = loop.create_future()

        def deliver(configmap: Mapping[str, Any] | None) -> None:
            def apply() -> None:
                origin = self.description
                if configmap is not None:
                    rv = (configmap.get("metadata") or {}).get("resourceVersion")
                    origin = f"{origin} (resourceVersion {rv})"
                apply_configmap(state, configmap, key=self.data_key, origin=origin)

            try:
                loop.call_soon_threadsafe(apply)
            except RuntimeError:  # loop closed: we are shutting down
                stop.set()

        def target() -> None:
            exc: BaseException | None = None
            try:
                self._watch_loop(deliver, stop)
            except BaseException as e:  # noqa: BLE001 - reported to the event loop below
                exc = e
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, finished, exc)

        thread = threading.Thread(target=target, name=f"watch-{self.namespace}-{self.name}", daemon=True)
        thread.start()
        try:
            await finished
        finally:
            stop.set()
            w = self._watch
            if w is not None:
                w.stop()  # shuts the socket down so a blocked read returns at once
            # Daemon thread: it never holds up process exit; give it a moment to end cleanly.
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 2.0)

    def _watch_loop(self, deliver: Callable[[Mapping[str, Any] | None], None], stop: threading.Event) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        list_configmaps = self._list_configmaps
        selector = f"metadata.name={self.name}"
        resource_version: str | None = None
        backoff = s.backoff_initial
        while not stop.is_set():
            try:
                if resource_version is None:
                    resp = list_configmaps(
                        self.namespace,
                        field_selector=selector,
                        _preload_content=False,
                        _request_timeout=(10, 30),
                    )
                    listing = json.loads(resp.data)
                    items = listing.get("items") or []
                    resource_version = listing["metadata"]["resourceVersion"]
                    deliver(items[0] if items else None)
                    log.info("listed %s at resourceVersion %s; watching", self.description, resource_version)
                w = watch.Watch()
                self._watch = w
                if stop.is_set():
                    break
                for event in w.stream(
                    list_configmaps,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=s.watch_timeout_seconds,
                    _request_timeout=(10, s.watch_timeout_seconds + 15),
                ):
                    obj = event.get("raw_object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = rv
                    kind = event.get("type")
                    if kind in ("ADDED", "MODIFIED"):
                        deliver(obj)
                    elif kind == "DELETED":
                        deliver(None)
                    backoff = s.backoff_initial  # the connection works
                    if stop.is_set():
                        break
            except ApiException as exc:
                if stop.is_set():
                    break
                if exc.status == 410:
                    log.info(
                        "%s: resourceVersion %s is too old (410 Gone); relisting", self.description, resource_version
                    )
                    resource_version = None
                    continue
                log.warning(
                    "%s: API error %s %s; retrying in %.1fs", self.description, exc.status, exc.reason, backoff
                )
                backoff = _sleep_backoff(stop, backoff, s.backoff_max)
            except Exception as exc:  # noqa: BLE001 - connection errors, timeouts, bad responses
                if stop.is_set():
                    break
                log.warning(
                    "%s: watch failed (%s: %s); retrying in %.1fs", self.description, type(exc).__name__, exc, backoff
                )
                backoff = _sleep_backoff(stop, backoff, s.backoff_max)
            finally:
                self._watch = None

    def _list_configmaps(
        self,
        namespace: str,
        *,
        field_selector: str,
        resource_version: str | None = None,
        allow_watch_bookmarks: bool | None = None,
        timeout_seconds: int | None = None,
        watch: bool | None = None,
        _preload_content: bool = False,
        _request_timeout: Any = None,
    ):  # no return annotation or docstring: kubernetes.watch then yields events as plain dicts
        # GET /api/v1/namespaces/{namespace}/configmaps as CoreV1Api.list_namespaced_config_map
        # does it (BearerToken auth settings, so in-cluster tokens are refreshed), returning the
        # raw urllib3 response and raising ApiException on a non-2xx status like its
        # ``_preload_content=False`` mode.
        from kubernetes.client.exceptions import ApiException

        query = [
            (k, v)
            for k, v in (
                ("fieldSelector", field_selector),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", allow_watch_bookmarks),
                ("timeoutSeconds", timeout_seconds),
                ("watch", watch),
            )
            if v is not None
        ]
        request = self.api_client.param_serialize(
            method="GET",
            resource_path="/api/v1/namespaces/{namespace}/configmaps",
            path_params={"namespace": namespace},
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response


def _sleep_backoff(stop: threading.Event, backoff: float, cap: float) -> float:
    stop.wait(backoff * random.uniform(0.8, 1.2))
    return min(backoff * 2, cap)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
