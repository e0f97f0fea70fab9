"""The project's modules import one another without a circle, and clients load no server.

The graph holds every import between the project's modules: module-level ones and the lazy ones
inside functions too (a lazy import hides a circle from Python's loader, not from a reader: the two
modules still cannot be understood, tested or moved apart). Generated stubs (`rlhp.v1`) are left
out: they import only protobuf/grpc.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"actors": ROOT / "actors", "learner": ROOT / "learner", "reward_service": ROOT / "reward_service",
            "query_service": ROOT / "query_service", "rlhp": ROOT / "proto" / "rlhp"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            if name.startswith("rlhp.v1"):
                continue
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere in its body (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # the longest prefix of `target` that is one of our modules
        parts = target.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in modules:
                if cand != name:
                    found.add(cand)
                return

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in modules else mod)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "learner.multi" in g["learner.train_cli"]
    assert "query_service.store" in g["query_service.core"]  # `from .store import ...`
    assert "reward_service.client" in g["learner.reward_connector"]  # inside a function


def test_no_import_circle_between_the_projects_modules():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_import_downwards_only():
    """proto (rlhp) → reward_service → query_service → actors → learner: nothing imports upwards."""
    order = ["rlhp", "reward_service", "query_service", "actors", "learner"]
    rank = {p: i for i, p in enumerate(order)}
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
           if rank[t.split(".")[0]] > rank[m.split(".")[0]]]
    assert not bad, bad


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("client, forbidden", [
    ("query_service.client", {"query_service.core", "query_service.server", "query_service.store", "sqlite3",
                              "reward_service.core", "torch"}),
    ("reward_service.client", {"reward_service.core", "reward_service.server", "torch", "sqlite3"}),
    ("query_service.web.app", {"query_service.core", "query_service.server", "query_service.store", "sqlite3",
                               "torch"}),
])
def test_a_client_loads_neither_its_server_nor_its_core(client, forbidden):
    loaded = _loaded_after(f"import {client}")
    assert client in loaded
    assert not loaded & forbidden, sorted(loaded & forbidden)


def test_the_domain_types_load_neither_protobuf_nor_grpc():
    loaded = _loaded_after("import rlhp.types")
    assert "rlhp.types" in loaded
    assert not loaded & {"google.protobuf", "grpc", "rlhp.v1", "rlhp.wire"}, \
        sorted(loaded & {"google.protobuf", "grpc", "rlhp.v1", "rlhp.wire"})


@pytest.mark.parametrize("core", ["query_service.core", "reward_service.core"])
def test_a_core_loads_neither_grpc_nor_the_generated_stubs(core):
    forbidden = {"grpc", "rlhp.v1", "rlhp.v1.common_pb2", "rlhp.wire", "rlhp.rpc"}
    loaded = _loaded_after(f"import {core}")
    assert core in loaded
    assert not loaded & forbidden, sorted(loaded & forbidden)


def test_the_codec_re_exports_the_domain_types():
    import rlhp.types
    import rlhp.wire

    for name in ("Space", "Preference", "InvalidRequest", "NotFound", "FailedPrecondition", "Unauthenticated",
                 "check_transitions", "check_finite"):
        assert getattr(rlhp.wire, name) is getattr(rlhp.types, name), name


MAX_LINES = 500


def test_no_source_file_is_over_500_lines():
    """A file past ~500 lines has so far always held more than one concept (issue 9): split it along
    its concepts rather than raise this limit. Generated stubs are not counted."""
    roots = [*PACKAGES.values(), ROOT / "tests", ROOT / "benchmarks", ROOT / "scripts", ROOT / "deploy"]
    long = {}
    for root in roots:
        for path in root.rglob("*.py"):
            if "v1" in path.relative_to(ROOT).parts:
                continue
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                long[str(path.relative_to(ROOT))] = n
    assert not long, f"files over {MAX_LINES} lines: {long}"
