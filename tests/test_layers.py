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


def _imports(path: Path) -> set[str]:
    """fedmas modules ``path`` imports anywhere — at module level and inside functions (an import in a
    function is still an import) — except under ``if TYPE_CHECKING:`` (never executed)."""
    out: set[str] = set()

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmas"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fedmas"))
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(ast.parse(path.read_text()))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in mods and i not in (m, "fedmas")} for m, p in mods.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import cycle: " + " → ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


# The pipeline's layers, lowest first: a module imports only from its own layer or lower ones.
LAYERS = [
    ("constants", "tasks", "files", "plugins", "flops", "runtime", "grouping", "stats", "messages", "accounting",
     "tensorboard", "data.render", "engines.flower_wire", "yamlio", "weighting.base", "weighting.gradnorm",
     "weighting.pcgrad", "weighting.famo", "weighting", "aggregation.base", "aggregation.fedprox", "aggregation",
     "text", "summaryfile"),
    ("data", "data.federated", "data.scenes", "data.taskonomy", "data.preview", "models", "config_sections",
     "config", "engines.flower_pack", "report"),
    ("evaluate", "affinity", "signals.base", "signals.lookahead", "signals.cosine", "signals", "client", "trivial",
     "testing", "console", "server", "server.state",
     "server.replies", "server.federation", "server.bookkeeping"),
    ("server.loop", "engines", "engines.inprocess", "engines.flower_client", "engines.flower_shim",
     "engines.flower_worker"),
    ("arrivals", "methods.base", "methods.mas", "methods.tag", "methods.hoa", "methods.exhaustive", "methods",
     "engines.flower", "engines.flower_deploy"),
    ("engines.flower_rehearsal",),
    ("checks", "runfolder", "summary", "run"),
    ("compare_summary", "compare", "cli", "flower_app.fedmas_server", "flower_app.fedmas_client"),
]


def test_imports_point_down_the_layers():
    rank = {f"fedmas.{m}": i for i, layer in enumerate(LAYERS) for m in layer}
    graph = _graph()
    unplaced = sorted(set(graph) - set(rank) - {"fedmas"})
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    up = [f"{m} (layer {rank[m]}) → {n} (layer {rank[n]})" for m, ns in graph.items() for n in ns
          if m in rank and n in rank and rank[n] > rank[m]]
    assert not up, "imports reaching up a layer: " + "; ".join(sorted(up))


def test_server_side_imports_no_training_code():
    code = ("import sys; import fedmas.run, fedmas.server.loop, fedmas.methods, fedmas.messages, fedmas.compare; "
            "bad = [m for m in ('fedmas.client', 'fedmas.affinity') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flower_server_app_imports_no_training_code():
    import pytest

    pytest.importorskip("flwr")
    app = PKG / "flower_app"
    code = (f"import sys; sys.path.insert(0, {str(app)!r}); import fedmas_server; "
            "bad = [m for m in ('fedmas.client', 'fedmas.affinity') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
