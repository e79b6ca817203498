"""Import rules of the installed package (docs/architecture.md), checked twice.

1. The import-linter contracts in pyproject.toml, run on the package as Python
   imports it (``lint-imports``' own check, with its own graph builder).
2. An independent walk of every module's ``import`` statements (``ast``, lazy
   and ``TYPE_CHECKING`` imports included, plus ``importlib.import_module``
   of a literal name), so a failure names the file, the line and the rule.

"The package as Python imports it": ``fgjax`` and ``fgjax.kernels`` are found
with ``importlib.util.find_spec``. In an editable install the kernels live in
the checkout's top-level ``kernels/`` folder (pyproject's ``package-dir``), not
under ``fgjax/``, so import-linter runs on a copy laid out as a wheel installs it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

# Top to bottom; modules of one layer may import each other unless the layer is
# marked independent. The same table as pyproject's layers contract (checked below).
LAYERS: tuple[tuple[frozenset[str], bool], ...] = (
    (frozenset({"cli", "pipeline", "analysis_job", "plots", "outputs"}), False),
    (frozenset({"serving", "evaluation"}), True),
    (frozenset({"analysis", "training"}), True),
    (frozenset({"ranking"}), False),
    (frozenset({"data", "models", "checkpoint"}), False),
    (frozenset({"config", "errors", "shapes", "processes"}), False),
    (frozenset({"kernels"}), False),
)
RANK = {group: len(LAYERS) - i for i, (groups, _) in enumerate(LAYERS) for group in groups}
INDEPENDENT = {group for groups, independent in LAYERS if independent for group in groups}
# What a module below the top may take from the root package: its __init__ maps
# every other public name lazily onto top-layer modules (an upward import in disguise).
ROOT_NAMES_ALLOWED = frozenset({"__version__"})


def _package_dirs() -> dict[str, Path]:
    """Where Python imports ``fgjax`` and ``fgjax.kernels`` from."""
    dirs = {}
    for name in ("fgjax", "fgjax.kernels"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not an importable package"
        dirs[name] = Path(next(iter(spec.submodule_search_locations))).resolve()
    return dirs


def _modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the package in ``dirs``: dotted name -> source file."""
    modules = {}
    for package, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if package == "fgjax" and parts[:1] == ("kernels",):
                continue  # found through fgjax.kernels' own location (the same files or a symlink)
            modules[".".join((package, *parts))] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[int, str, str]]:
    """``(line, imported module, how it was written)`` for each import in one module.

    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``
    (with the name kept, so a root-package import can be judged by what it takes).
    """
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield node.lineno, target if target in known else base, f"from {base} import {alias.name}"
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value, f"import_module({node.args[0].value!r})"


def _group(module: str) -> str | None:
    """``fgjax.data.reader`` -> ``data``; the root package -> None; outside fgjax -> ''."""
    parts = module.split(".")
    if parts[0] != "fgjax":
        return ""
    return parts[1] if len(parts) > 1 else None


Graph = tuple[dict[str, Path], dict[str, list[tuple[int, str, str]]]]


def _graph(dirs: dict[str, Path] | None = None) -> Graph:
    """Modules and their imports, of the installed package unless ``dirs`` names other folders."""
    modules = _modules(dirs or _package_dirs())
    known = set(modules)
    return modules, {name: list(_imports(name, path, known)) for name, path in modules.items()}


def _where(modules: dict[str, Path], name: str, line: int) -> str:
    path = modules[name]
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    return f"{shown}:{line}"


def test_every_module_has_a_layer():
    modules, _ = _graph()
    missing = sorted({_group(m) for m in modules} - set(RANK) - {None})
    assert not missing, f"fgjax subpackages/modules without a layer (add them to LAYERS and pyproject): {missing}"


def _upward_imports(modules: dict[str, Path], graph: dict) -> list[str]:
    violations = []
    for name, imports in graph.items():
        src = _group(name)
        for line, target, text in imports:
            dst = _group(target)
            if dst == "" or src is None:
                continue  # outside fgjax; or the root package's own (lazy) imports
            if dst is None:
                taken = text.rsplit(" ", 1)[-1]
                if text.startswith("from fgjax import") and taken not in ROOT_NAMES_ALLOWED:
                    violations.append(f"{_where(modules, name, line)}: {name}: `{text}` takes the root package's "
                                      f"lazy public API (it maps onto the top layer); import the module itself")
                continue
            if src == dst or src not in RANK or dst not in RANK:
                continue
            if RANK[dst] > RANK[src]:
                violations.append(f"{_where(modules, name, line)}: {name} imports {target} (`{text}`): "
                                  f"{src} may not import {dst}, which is above it")
            elif RANK[dst] == RANK[src] and src in INDEPENDENT:
                violations.append(f"{_where(modules, name, line)}: {name} imports {target} (`{text}`): "
                                  f"{src} and {dst} are independent siblings")
    return violations


def _kernel_imports(modules: dict[str, Path], graph: dict) -> list[str]:
    return [
        f"{_where(modules, name, line)}: {name} imports {target} (`{text}`)"
        for name, imports in graph.items() if _group(name) == "kernels"
        for line, target, text in imports if _group(target) not in ("", "kernels")
    ]


def _training_reached(modules: dict[str, Path], graph: dict) -> list[str]:
    """Import chains from serving/evaluation to training (transitively)."""
    violations = []
    for start in sorted(m for m in modules if _group(m) in ("serving", "evaluation")):
        seen, stack = {start: [start]}, [start]
        while stack:
            here = stack.pop()
            for line, target, _ in graph.get(here, ()):
                if target not in modules or target in seen:
                    continue
                seen[target] = [*seen[here], f"{target} ({_where(modules, here, line)})"]
                if _group(target) == "training":
                    violations.append(" -> ".join(seen[target]))
                else:
                    stack.append(target)
    return violations


def _bench_imports(modules: dict[str, Path], graph: dict) -> list[str]:
    return [
        f"{_where(modules, name, line)}: {name}: `{text}`"
        for name, imports in graph.items() for line, target, text in imports
        if target == "bench" or target.startswith("bench.")
    ]


def test_imports_point_down_only():
    violations = _upward_imports(*_graph())
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_kernels_import_nothing_from_fgjax():
    violations = _kernel_imports(*_graph())
    assert not violations, "kernels must import nothing from fgjax:\n" + "\n".join(violations)


def test_serving_and_evaluation_never_reach_training():
    # Transitively: serving must load and serve a checkpoint without the training code.
    violations = _training_reached(*_graph())
    assert not violations, "serving/evaluation reach training:\n" + "\n".join(violations)


def test_fgjax_never_imports_bench():
    violations = _bench_imports(*_graph())
    assert not violations, "bench/ is outside the package; run it as `python -m bench`:\n" + "\n".join(violations)


def test_walk_sees_the_whole_package():
    # Guards the walk itself: it finds the kernels wherever they are installed,
    # resolves relative imports, and sees lazy (function-level) imports.
    modules, graph = _graph()
    assert {"fgjax.kernels", "fgjax.kernels._detector", "fgjax.config", "fgjax.cli"} <= set(modules)
    targets = {target for _, target, _ in graph["fgjax.kernels"]}
    assert "fgjax.kernels._detector" in targets  # `from ._detector import ...`
    config_targets = {target for _, target, _ in graph["fgjax.config"]}
    assert "fgjax.kernels" in config_targets  # the lazy import inside DetectorConfig.kernel_params


def test_layer_table_matches_the_import_linter_contract():
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    parsed = []
    for layer in layers["layers"]:
        independent = "|" in layer
        parsed.append((frozenset(p.strip() for p in layer.replace("|", ":").split(":")), independent))
    assert tuple(parsed) == LAYERS


def _installed_copy(tmp_path: Path) -> Path:
    """The package copied as a wheel lays it out (kernels under fgjax/), for import-linter."""
    dirs = _package_dirs()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "kernels")
    shutil.copytree(dirs["fgjax"], tmp_path / "fgjax", ignore=ignore)
    shutil.copytree(dirs["fgjax.kernels"], tmp_path / "fgjax" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _lint_imports(site: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")
    # cwd = the copy: import-linter puts the working folder first on sys.path.
    return subprocess.run([sys.executable, "-c", code, str(PYPROJECT)], cwd=site, capture_output=True, text=True,
                          timeout=300)


def test_import_linter_contracts_hold(tmp_path):
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    result = _lint_imports(_installed_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def _plant_violations(site: Path) -> None:
    """One violation of each rule, written into the copy."""
    plants = {
        "ranking/topk.py": "from fgjax.serving import model  # planted: upward\n",
        "serving/model.py": "import fgjax.training.loop  # planted: serving -> training\n",
        "kernels/_topk.py": "from .. import config  # planted: kernels -> fgjax\n",
        "cli.py": "def _planted():\n    import importlib\n    return importlib.import_module('bench.topk')\n",
        "data/vocab.py": "from fgjax import load  # planted: the lazy root API\n",
    }
    for rel, text in plants.items():
        path = site / "fgjax" / rel
        path.write_text(path.read_text() + "\n" + text)


def test_walk_catches_planted_violations(tmp_path):
    site = _installed_copy(tmp_path)
    _plant_violations(site)
    modules, graph = _graph({"fgjax": site / "fgjax", "fgjax.kernels": site / "fgjax" / "kernels"})
    upward = "\n".join(_upward_imports(modules, graph))
    assert "fgjax.ranking.topk imports fgjax.serving.model (`from fgjax.serving import model`)" in upward
    assert "ranking may not import serving, which is above it" in upward
    assert "fgjax.data.vocab: `from fgjax import load` takes the root package's lazy public API" in upward
    assert "fgjax.kernels._topk imports fgjax.config (`from fgjax import config`)" in "\n".join(
        _kernel_imports(modules, graph))
    chains = _training_reached(modules, graph)
    assert any(c.startswith("fgjax.serving.model -> fgjax.training.loop") for c in chains), chains
    assert any("fgjax.cli: `import_module('bench.topk')`" in v for v in _bench_imports(modules, graph))


def test_import_linter_contracts_catch_planted_violations(tmp_path):
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    site = _installed_copy(tmp_path)
    _plant_violations(site)
    kernel = site / "fgjax" / "kernels" / "_topk.py"
    kernel.write_text(kernel.read_text() + "import bench  # planted: a plain import (import_module is invisible)\n")
    result = _lint_imports(site)
    assert result.returncode != 0
    out = result.stdout
    for contract in ("fgjax layers: imports point down only", "serving and evaluation never import training",
                     "kernels import nothing from fgjax", "fgjax never imports bench"):
        assert any(line.startswith(contract) and line.endswith("BROKEN") for line in out.splitlines()), out
    assert "fgjax.serving.model -> fgjax.training.loop" in out
    assert "Contracts: 0 kept, 4 broken." in out


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is in the test extra")
    result = subprocess.run([ruff, "check", "--no-cache", "fgjax", "kernels", "bench", "tests"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_link_only_inside_the_repository():
    # README and docs/ are read by users of fgjax: every link must open a file they have.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"README.md", "formulas.md", "architecture.md", "data.md"}
    bad = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = (page.parent / target.split("#")[0]).resolve()
            if "://" in target or not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: ({target})")
    assert not bad, "links outside the repository or to missing files:\n" + "\n".join(bad)
