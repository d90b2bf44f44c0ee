"""core/ stays pure: no kopf, kubernetes or aiohttp, no I/O, no clock reads (see docs/design.md).

Checked two ways: importing every core module in a fresh interpreter where those packages
cannot be imported at all, and scanning the source, which also catches an import hidden in a
function body that the first check would only hit when that function runs.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import signing_key_operator.core

from .test_layout import imported

FORBIDDEN_TOP_LEVEL = ("kopf", "kubernetes", "aiohttp")
IMPURE_LAYERS = ("k8s", "controller", "sidecar", "cli", "devcluster", "sign", "verify", "__main__")
CORE_DIR = Path(signing_key_operator.core.__file__).parent
CORE_FILES = sorted(CORE_DIR.glob("*.py"))
CORE_MODULES = sorted(
    "signing_key_operator.core" + ("" if path.stem == "__init__" else f".{path.stem}")
    for path in CORE_FILES
)

_IMPORT_WITH_THE_DOOR_SHUT = """
import importlib, json, sys

FORBIDDEN = set(sys.argv[1].split(","))

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"core must not import {name}")
        return None

sys.meta_path.insert(0, Refuse())
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)))
"""


def test_core_has_the_expected_modules():
    for module in ("durations", "keys", "spec", "planner"):
        assert f"signing_key_operator.core.{module}" in CORE_MODULES


def test_every_core_module_imports_without_kopf_kubernetes_or_aiohttp():
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_THE_DOOR_SHUT, ",".join(FORBIDDEN_TOP_LEVEL), *CORE_MODULES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.name)
def test_core_sources_import_nothing_impure(path):
    offenders = []
    for line, name in imported(path):
        parts = name.split(".")
        if parts[0] in FORBIDDEN_TOP_LEVEL:
            offenders.append(f"{path.name}:{line} imports {name}")
        if parts[:1] == ["signing_key_operator"] and len(parts) > 1 and parts[1] in IMPURE_LAYERS:
            offenders.append(f"{path.name}:{line} imports the impure layer {name}")
    assert offenders == []


_CLOCK_AND_IO_CALLS = {
    "now",
    "utcnow",
    "today",
    "time",
    "time_ns",
    "monotonic",
    "perf_counter",
    "open",
    "getenv",
    "urlopen",
    "sleep",
}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.name)
def test_core_sources_read_no_clock_and_do_no_io(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = getattr(node.func, "attr", getattr(node.func, "id", None))
            if called in _CLOCK_AND_IO_CALLS:
                offenders.append(f"{path.name}:{node.lineno} calls {called}()")
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            offenders.append(f"{path.name}:{node.lineno} reads os.environ")
    assert offenders == []


def test_the_scanner_would_catch_a_forbidden_import():
    source = "import kopf\nfrom ..k8s import secrets\nfrom kubernetes.client import V1Secret\nimportlib.import_module('aiohttp')\n"
    names = [name for _, name in imported(CORE_DIR / "x.py", source)]
    assert "kopf" in names
    assert "signing_key_operator.k8s" in names
    assert "kubernetes.client" in names
    assert "aiohttp" in names


_MUTABLE_LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
# The lifecycle modules and the client table their defaults come from; jwks.py has its own owner
# and tests.
LIFECYCLE_FILES = [
    CORE_DIR / f"{name}.py" for name in ("durations", "keys", "spec", "planner", "verifier_clients")
]


@pytest.mark.parametrize("path", LIFECYCLE_FILES, ids=lambda path: path.name)
def test_core_sources_have_no_module_level_mutable_globals(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    offenders = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [getattr(target, "id", "?") for target in targets]
            mutable = isinstance(node.value, _MUTABLE_LITERALS) or (
                isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) in ("dict", "list", "set", "defaultdict")
            )
            if mutable and names != ["__all__"]:
                offenders.append(f"{path.name}:{node.lineno} {', '.join(names)}")
    assert offenders == []
