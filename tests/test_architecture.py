"""The package's shape: no import cycle among its modules, function-local imports included
(a cycle hidden behind a function-local import still ties the modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """headstart module -> the headstart modules it imports (anywhere in its body). ``from
    pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of
    ``pkg``."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    full = f"{target}.{a.name}"
                    deps.add(full if full in files else target)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "headstart"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    assert cycles(import_graph(pkg)) == [["headstart.a", "headstart.sub.b"]]


def test_no_import_cycle_among_package_modules():
    graph = import_graph()
    assert "headstart.report" in graph and graph["headstart.study"]  # the graph is real
    assert cycles(graph) == []


def test_report_is_a_leaf():
    """report/ renders plain data: it imports nothing else of headstart."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("headstart.report"):
            assert all(d.startswith("headstart.report") for d in deps), (name, deps)


def private_calls(path: Path) -> list[str]:
    """``obj._method(...)`` calls on anything but ``self`` / ``cls``: a module using another's
    internals instead of its public API."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("_")
            and not node.func.attr.startswith("__")
            and not (
                isinstance(node.func.value, ast.Name) and node.func.value.id in ("self", "cls")
            )
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_evidence_modules_use_the_public_data_and_feature_api():
    """rank, advise, study and tune read data and features through the estimators' public
    methods (read_labeled, split, input_spec, frozen_features, baseline_proba)."""
    calls = [
        c
        for name in ("select/rank.py", "advise.py", "study.py", "tune.py")
        for c in private_calls(SRC / name)
    ]
    assert calls == []


def test_no_long_file_without_a_reason():
    """A module past ~600 lines says at its top why it is not split ("Long file: ...")."""
    long = [
        f"{p.relative_to(SRC)} ({n} lines)"
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 650
        and "Long file:" not in "\n".join(p.read_text().splitlines()[:30])
    ]
    assert long == []
