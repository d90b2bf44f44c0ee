"""The package's folders are its architecture, and what each may import keeps them so.

- controller/ (the operator) decides through core/ and talks through k8s/; it never imports the
  CLIs or the sidecar, which are other processes.
- sidecar/ serves the set without kopf, and without the controller or the CLIs.
- sign.py and verify.py are what applications embed: no kopf, no aiohttp, none of the
  operator's rooms.
- k8s/ is an adapter below the controller: it imports core/ only.
- cli/ is imported by nothing but ``__main__``.
core/'s own rule (no kopf, kubernetes, aiohttp, I/O or clock) is tests/unit/test_core_imports.py,
which reads imports with :func:`imported` too.

The check reads the sources (relative imports resolved, and ``import_module`` of a constant), so an
import in a function body counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import signing_key_operator

PACKAGE = "signing_key_operator"
ROOT = Path(signing_key_operator.__file__).parent

# room -> (third-party packages it must not import, rooms of the package it must not import)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "controller": ((), ("cli", "sidecar", "devcluster", "__main__")),
    "sidecar": (("kopf",), ("controller", "cli", "devcluster", "__main__")),
    "sign": (("kopf", "aiohttp"), ("controller", "cli", "sidecar", "devcluster", "k8s", "__main__")),
    "verify": (("kopf", "aiohttp"), ("controller", "cli", "sidecar", "devcluster", "k8s", "__main__")),
    "k8s": (("kopf",), ("controller", "cli", "sidecar", "devcluster", "__main__")),
}


def room_of(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imported(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """Absolute names of the modules a source (``path``'s, unless given) imports, with their lines."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.append((node.lineno, source))
            names += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append((node.lineno, str(node.args[0].value)))
    return names


def offences(path: Path, source: str | None = None) -> list[str]:
    packages, rooms = RULES[room_of(path)]
    found = []
    for line, name in imported(path, source):
        parts = name.split(".")
        if parts[0] in packages:
            found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
        if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in rooms:
            found.append(f"{path.relative_to(ROOT)}:{line} imports {name} (the {parts[1]} room)")
    return found


SOURCES = sorted(path for path in ROOT.rglob("*.py") if room_of(path) in RULES)


def test_the_package_has_the_rooms_the_design_names():
    rooms = {room_of(path) for path in ROOT.rglob("*.py")}
    assert {"core", "k8s", "controller", "sidecar", "cli", "devcluster", "sign", "verify", "__main__"} <= rooms, rooms
    assert {path.name for path in ROOT.glob("*.py")} == {"__init__.py", "__main__.py", "sign.py", "verify.py"}, \
        "a module at the package's root belongs in one of its rooms"


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_each_room_imports_only_what_its_rule_allows(path):
    assert offences(path) == []


def test_only_the_entry_point_imports_the_cli():
    importers = [f"{path.relative_to(ROOT)}:{line}" for path in ROOT.rglob("*.py")
                 if room_of(path) not in ("cli", "__main__")
                 for line, name in imported(path) if name.split(".")[:2] == [PACKAGE, "cli"]]
    assert importers == []


def test_the_check_would_catch_a_controller_importing_the_sidecar_or_the_cli():
    source = "from ..sidecar.app import make_app\nimport kopf\nfrom ..cli import main\n"
    assert offences(ROOT / "controller" / "handlers.py", source) == [
        "controller/handlers.py:1 imports signing_key_operator.sidecar.app (the sidecar room)",
        "controller/handlers.py:1 imports signing_key_operator.sidecar.app.make_app (the sidecar room)",
        "controller/handlers.py:3 imports signing_key_operator.cli (the cli room)",
        "controller/handlers.py:3 imports signing_key_operator.cli.main (the cli room)",
    ]
    assert offences(ROOT / "sidecar" / "app.py", "import kopf\nfrom .. import verify\n") == [
        "sidecar/app.py:1 imports kopf"]
