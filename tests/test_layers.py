"""The package's import structure: no cycles, and the server side never imports training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fedmas

PKG = Path(fedmas.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """fedmas modules imported when ``path`` is imported (module level, outside ``if TYPE_CHECKING``)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmas"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fedmas"))
    return out


def test_no_import_cycle():
    mods = {_module_name(p): p for p in PKG.rglob("*.py") if "flower_app" not in p.parts}
    graph = {m: {i for i in _top_level_imports(p) if i in mods and i != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " → ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_server_side_imports_no_training_code():
    code = ("import sys; import fedmas.run, fedmas.server.loop, fedmas.methods, fedmas.messages, fedmas.compare; "
            "bad = [m for m in ('fedmas.client', 'fedmas.affinity') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flower_server_app_imports_no_training_code():
    import pytest

    pytest.importorskip("flwr")
    app = PKG / "engines" / "flower_app"
    code = (f"import sys; sys.path.insert(0, {str(app)!r}); import fedmas_server; "
            "bad = [m for m in ('fedmas.client', 'fedmas.affinity') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
