"""The code's shape: one way through it, and small parts.

Every import between the project's modules is read from the source with ``ast``: inside functions too, and
inside ``if TYPE_CHECKING:`` blocks too (an annotation that names a module above is a dependency on it, even if
the import never runs). So is a parameter annotated ``Any`` whose name is a project class's (``trainer: Any`` for
``Trainer``): a back-reference hidden from the checker is still one. The import graph must have no cycle, and
every import must point down the layers below: entry points -> run directory / training / evaluation / figures ->
config, registry, data and atomic files -> estimators and the maths -> ``pyro_vae.models`` and ``pyro_vae.guides``
(which import nothing of the project but the models' building blocks and the leaves) -> the leaves (errors,
``pyro_vae.checks``). A new module must be placed in a layer. Size is not capped here: ruff's complexity rules
(``[tool.ruff.lint]`` in pyproject.toml, run by ``.ci/run``) measure what makes code hard to read.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the package names they are installed as (pyproject.toml's package-dir).
SOURCES = {"pyro_vae": "pyro_vae", "models": "pyro_vae.models", "guides": "pyro_vae.guides"}

#: Lowest first. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("pyro_vae.errors", "pyro_vae.named", "pyro_vae.checks"),
    ("pyro_vae.models", "pyro_vae.models.*", "pyro_vae.guides", "pyro_vae.guides.*"),
    (
        "pyro_vae.estimators",
        "pyro_vae.estimators.*",
        "pyro_vae.closed_form",
        "pyro_vae.beta",
        "pyro_vae.kl_check",
        "pyro_vae.linear_gaussian",
        "pyro_vae.safe_load",
        "pyro_vae.static_mnist",
        "pyro_vae.atomic",
        "pyro_vae.interrupts",
        "pyro_vae.bits",
        "pyro_vae.ranks",
        "pyro_vae.psis",
        "pyro_vae.learning_curve",
        "pyro_vae.gap_trend",
        "pyro_vae.score_history",
        "pyro_vae.presets",
        "pyro_vae.presets.*",
        "pyro_vae.early_stopping",
    ),
    (
        "pyro_vae.registry",
        "pyro_vae.config",
        "pyro_vae.data",
        "pyro_vae.images",
        "pyro_vae.plugins",
        "pyro_vae.bundle",
        "pyro_vae.labelled_data",
        "pyro_vae.labelled_batches",
    ),
    (
        "pyro_vae.run_dir",
        "pyro_vae.strategy",
        "pyro_vae.training",
        "pyro_vae.guards",
        "pyro_vae.step",
        "pyro_vae.elbo_terms",
        "pyro_vae.evaluation",
        "pyro_vae.progress",
        "pyro_vae.densities",
        "pyro_vae.importance",
        "pyro_vae.ais",
        "pyro_vae.gaps",
        "pyro_vae.collapse",
        "pyro_vae.snr",
        "pyro_vae.comparison",
        "pyro_vae.exact_reference",
        "pyro_vae.figures",
        "pyro_vae.sphere_figures",
        "pyro_vae.ablation",
        "pyro_vae.pairs",
        "pyro_vae.loggers",
        "pyro_vae.mlflow_logger",
        "pyro_vae.wandb_logger",
        "pyro_vae.distributed",
        "pyro_vae.sbc",
        "pyro_vae.sbc_figures",
        "pyro_vae.validation",
        "pyro_vae.class_samples",
        "pyro_vae.semi_supervised",
    ),
    ("pyro_vae", "pyro_vae.__main__", "pyro_vae.cli", "pyro_vae.commands", "pyro_vae.commands.*"),
]


def module_files(root: Path = ROOT, sources: dict[str, str] = SOURCES) -> dict[str, Path]:
    """Module name -> source file, for every .py file of the project's packages."""
    modules = {}
    for folder, package in sources.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the module, wherever it stands (``TYPE_CHECKING`` blocks and functions too)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def class_owners(modules: dict[str, Path]) -> dict[str, str]:
    """snake_case class name -> the module that defines it (``train_config`` -> ``pyro_vae.config``)."""
    owners: dict[str, str] = {}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                owners.setdefault(_snake(node.name), name)
    return owners


def any_back_references(tree: ast.AST, owners: dict[str, str]) -> set[str]:
    """Modules named by a parameter annotated ``Any`` that bears one of their class's names (``trainer: Any``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None and ast.unparse(node.annotation) == "Any":
            if node.arg in owners:
                found.add(owners[node.arg])
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to: itself, else its longest enclosing module (package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file) or refers to through ``Any``."""
    graph: dict[str, set[str]] = {}
    owners = class_owners(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        targets = {m for m in any_back_references(tree, owners) if m != name}
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
                # "from a.b import c": the submodule a.b.c if there is one, else the module a.b.
                candidates = [c for c in candidates[:-1] if c in modules] or [base]
            for candidate in candidates:
                target = _resolve(candidate, modules)
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int | None:
    for i, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    return None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(source):
                problems.append(f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})")
            # Models never need guides; guides may use the models' building blocks (pyro_vae.models.networks).
            if source.startswith("pyro_vae.models") and target.startswith("pyro_vae.guides"):
                problems.append(f"{source} imports {target}: the model must not depend on the guide")
    return problems


MODULES = module_files()
GRAPH = import_graph(MODULES)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_import_cycle_counting_every_import():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_imports_point_down_the_layers():
    assert layering_violations(GRAPH) == []


def test_models_and_guides_import_nothing_of_the_project_above_them():
    """Models and guides may use each other's building blocks and the leaves (errors, the option checks)."""
    for name, targets in GRAPH.items():
        if name.startswith(("pyro_vae.models", "pyro_vae.guides")):
            own = ("pyro_vae.models", "pyro_vae.guides")
            above = [t for t in targets if not t.startswith(own) and layer_of(t) != 0]
            assert above == [], (name, above)


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The checks above can fail: a package whose b imports a inside a function, while a imports b."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from pkg import a  # a function-level import\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "d.py").write_text("from typing import Any\nclass Trainer: ...\n")
    (pkg / "e.py").write_text("from typing import Any\ndef run(trainer: Any, model: Any) -> None: ...\n")
    graph = import_graph(module_files(tmp_path, {"pkg": "pkg"}))
    assert graph["pkg.c"] == {"pkg.a"}  # an annotation's import is a dependency even if it never runs
    assert graph["pkg.e"] == {"pkg.d"}  # trainer: Any stands for pkg.d's Trainer; model names no class
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    assert layering_violations({"pyro_vae.models.model": {"pyro_vae.training"}}) != []
