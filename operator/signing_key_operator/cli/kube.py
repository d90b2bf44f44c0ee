"""How the commands reach the API server, and how they say what it refused.

A person runs these from a laptop (a kubeconfig: ``--kubeconfig``, else ``KUBECONFIG``, else
~/.kube/config, the context's namespace as the default) or from a pod (its ServiceAccount). The
API's refusals become sentences a person can act on: what was not found, or which verb on which
resource RBAC did not allow, never a stack trace.
"""

from __future__ import annotations

import json
import os

GROUP, VERSION = "signingkeys.dev", "v1alpha1"


class CommandError(Exception):
    """What went wrong, in words a person can act on; printed as is, exit code 1."""


def connect(kubeconfig: str | None, namespace: str | None):
    """An API client and the namespace to use."""
    from kubernetes import client, config

    if kubeconfig or "KUBERNETES_SERVICE_HOST" not in os.environ:
        try:
            api_client = config.new_client_from_config(config_file=kubeconfig, persist_config=False)
        except config.ConfigException as error:
            raise CommandError(f"no usable kubeconfig ({error})") from None
        return api_client, namespace or _context_namespace(kubeconfig)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration), namespace or "default"


def _context_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts(config_file=kubeconfig)
    except config.ConfigException:
        return "default"
    return (context or {}).get("context", {}).get("namespace") or "default"


def explain(error, verb: str, resource: str, namespace: str, name: str | None = None) -> CommandError:
    """An ApiException as a sentence: not found, not allowed (which verb on which resource), or
    the API server's own message."""
    what = f"{resource} {name}" if name else resource
    if error.status == 404:
        return CommandError(f"{what} not found in namespace {namespace}")
    if error.status in (401, 403):
        return CommandError(f"not allowed to {verb} {resource} in namespace {namespace}: "
                            f"your identity needs the {verb!r} verb on {resource} there (RBAC)")
    return CommandError(f"the API server refused to {verb} {what} in namespace {namespace}: {api_message(error)}")


def api_message(error) -> str:
    try:
        return json.loads(error.body).get("message", error.reason)
    except (TypeError, ValueError):
        return str(error.reason)
