"""headstart installs like a library: every import is a declared dependency, the version is
the installed one, and the command line answers --help without loading torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import headstart

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "headstart"


def _imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in src/ (function-local imports
    included) -> the first file that imports each."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "headstart" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    """Distribution names in pyproject's dependencies and every extra, normalised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {_normal(re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0]) for s in specs}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_a_declared_dependency():
    owners = packages_distributions()
    declared = _declared()
    missing = []
    for module, where in _imported_modules().items():
        dists = owners.get(module)
        assert dists, f"{module} (imported in {where}) is not installed: is it a typo?"
        if not any(_normal(d) in declared for d in dists):
            missing.append(f"{module} ({'/'.join(dists)}, imported in {where})")
    assert not missing, "declare these in pyproject.toml: " + ", ".join(missing)


def test_the_all_extra_names_every_other_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (spec,) = extras["all"]
    named = set(re.search(r"\[(.*)\]", spec).group(1).split(","))
    assert named == set(extras) - {"all", "test", "dev"}


def test_every_pinned_requirement_is_declared():
    """requirements.txt is the exact pin set of setup; pyproject declares the same packages
    (transitive pins that no module imports, e.g. greenlet, may stand in requirements only)."""
    pinned = {
        _normal(line.split("==")[0])
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    declared = _declared()
    indirect = {"greenlet", "lightning-utilities", "cffi", "pycparser"}  # deps of declared ones
    assert pinned - declared - indirect == set()


def test_version_is_the_installed_one():
    from importlib.metadata import version

    assert headstart.__version__ == version("headstart")


def test_help_and_version_answer_without_torch():
    code = (
        "import sys\nfrom headstart.cli import main\n"
        "for argv in (['--help'], ['fit', '--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'transformers', 'sklearn', 'numpy')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    assert f"headstart {headstart.__version__}" in proc.stdout


def test_public_names_load_on_first_use():
    assert "ImageClassifier" in dir(headstart)
    assert headstart.FitConfig().seed is not None
    try:
        headstart.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_all_names_every_public_name():
    assert sorted(headstart.__all__) == sorted(headstart._PUBLIC)
