"""A small asynchronous Kubernetes REST client on aiohttp.

The official `kubernetes` client is synchronous; running each of a thousand policies' calls in a
thread pool costs threads and latency. Credentials still come from the official client's config
loaders (kubeconfig, or in-cluster with token refresh), so authentication behaves as users expect.
Bodies are plain JSON dicts, as the API server speaks them.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


class ApiError(Exception):
    """A non-2xx answer. `message` is the API server's own text (it never echoes Secret data)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


def load_configuration(kubeconfig: str | None = None) -> k8s_client.Configuration:
    """Kubeconfig when given; else in-cluster when running in a pod; else the default kubeconfig."""
    configuration = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
POLICIES = Resource("signingkeys.dev", "v1alpha1", "signingkeypolicies")
REVOCATIONS = Resource("signingkeys.dev", "v1alpha1", "tokenrevocations")


class KubeApi:
    def __init__(self, configuration: k8s_client.Configuration, *, connections: int = 32):
        self._configuration = configuration
        self._host = configuration.host.rstrip("/")
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._configuration.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=self._configuration.ssl_ca_cert)
        if self._configuration.cert_file:
            context.load_cert_chain(self._configuration.cert_file, self._configuration.key_file)
        return context

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = await self._ensure_session()
        data = None if body is None else json.dumps(body)
        async with session.request(
            method, self._host + path, data=data, params=params,
            headers=self._headers(content_type if data is not None else None),
        ) as reply:
            text = await reply.text()
            if reply.status >= 300:
                try:
                    status = json.loads(text)
                    raise ApiError(reply.status, status.get("reason", ""), status.get("message", ""))
                except (ValueError, AttributeError):
                    raise ApiError(reply.status, reply.reason or "", text[:200]) from None
            return json.loads(text) if text else {}

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def list(self, resource: Resource, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        reply = await self.request("GET", resource.path(namespace), params=params)
        return reply.get("items", [])

    async def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", resource.path(namespace), body=body)

    async def replace(self, resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT; the body's metadata.resourceVersion makes it a compare-and-swap (409 if stale)."""
        return await self.request("PUT", resource.path(namespace, body["metadata"]["name"]), body=body)

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", resource.path(namespace, name, subresource), body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, resource: Resource, namespace: str, name: str, resource_version: str | None = None) -> dict[str, Any]:
        """DELETE, guarded by resourceVersion when given (409 if the object changed since);
        an object already gone is not an error. Returns nothing worth keeping ({})."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
        except ApiError as error:
            if not error.not_found:
                raise
        return {}
