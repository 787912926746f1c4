"""The serving half asks the task object (``estimator.serving``, :mod:`headstart.tasks.serving`)
instead of comparing task names: ``inference``, ``export``, ``serve``, ``predict`` and the CLI
hold at most 3 comparisons of a task against a task name, each listed here with the reason it
stays.

A comparison counts when one side is ``task`` (a name, or an attribute such as
``args.task`` / ``est.task``, or ``config.get("task")`` / ``config["task"]``) and the other a
string, or a tuple / list / set of strings (``task in ("audio", "asr")``).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headstart"
MODULES = ("inference.py", "export.py", "serve.py", "predict.py", "cli")
MOST = 3

# (file, the comparison as ast.unparse writes it): why it stays
ALLOWED = {
    (
        "cli/flags.py",
        "task == 'image'",
    ): "command-line data, not behaviour: image is the default of every --task flag, so a "
    "command line that rank / advise print leaves the flag out for it",
}


def _is_task(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "task"
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return (
            node.func.attr == "get"
            and bool(node.args)
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "task"
        )
    return False


def _is_name(node: ast.AST) -> bool:
    """A string, or a tuple / list / set of strings."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_name(e) for e in node.elts)
    return False


def task_branches(source: str) -> list[tuple[int, str]]:
    """``(line, comparison)`` of every comparison of a task against task names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for a, b in itertools.pairwise(sides):
            if (_is_task(a) and _is_name(b)) or (_is_task(b) and _is_name(a)):
                found.append((node.lineno, ast.unparse(node)))
                break
    return found


def _files() -> list[Path]:
    out = []
    for name in MODULES:
        path = SRC / name
        out.extend(
            sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        )
    return out


def branches() -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for path in _files():
        rel = path.relative_to(SRC).as_posix()
        for line, text in task_branches(path.read_text(encoding="utf-8")):
            out.setdefault((rel, text), []).append(line)
    return out


def test_the_counter_sees_every_form():
    code = (
        "if task == 'text': pass\nif args.task != 'image': pass\n"
        "if est.task in ('detect', 'asr'): pass\nif config.get('task') == 'asr': pass\n"
        "if c['task'] == 'x': pass\nif 'audio' == self.task: pass\n"
        "if task == other: pass\nif mode == 'text': pass\nif task: pass\n"
    )
    assert [line for line, _ in task_branches(code)] == [1, 2, 3, 4, 5, 6]


def test_serving_modules_ask_the_task_object():
    assert _files(), SRC
    found = branches()
    where = "\n".join(
        f"  {f}:{','.join(map(str, lines))}: {text}" for (f, text), lines in sorted(found.items())
    )
    unlisted = [key for key in found if key not in ALLOWED]
    assert not unlisted, (
        "task-name branches in the serving half; ask the task object "
        f"(estimator.serving) instead:\n{where}"
    )
    assert sum(len(lines) for lines in found.values()) <= MOST, where
    assert all(reason.strip() for reason in ALLOWED.values())


def test_every_task_names_its_serving_object():
    import pytest

    from headstart.tasks import ESTIMATORS, TaskServing, serving_for

    for task, cls in ESTIMATORS.items():
        serving = serving_for(task)
        assert isinstance(serving, TaskServing) and serving.task == cls.task == task
        refusal = serving.refusal("serving", "runs/x")
        assert (refusal is None) == serving.served
    assert "serving detectors is not supported" in serving_for("detect").refusal("serving", "r")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        serving_for("nope")
