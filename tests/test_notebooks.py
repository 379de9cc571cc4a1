"""The tutorial notebooks: each runs top to bottom in a fresh kernel in smoke mode, and is committed executed.

Smoke mode is the environment variable SMOKE_TEST=1, which the notebooks read to shrink epochs and sample counts;
their numerical checks are ``assert``s, so a wrong number fails the cell and the test, as does any exception.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
EXPECTED = [
    "01_deriving_the_loss",
    "02_why_kl",
    "03_swapping_priors",
    "04_comparing_estimators",
    "05_how_good_is_my_vae",
    "06_variational_families",
    "07_discrete_estimators",
    "08_labels_conditional_and_m2",
    "09_hierarchical_vaes",
]
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def smoke_kernel_env(tmp_path_factory):
    """Environment for the kernels: SMOKE_TEST=1, the repo importable, and "python3" meaning *this* interpreter.

    A kernelspec written for sys.executable and put first on JUPYTER_PATH wins over any user-wide "python3" spec
    that might point at another Python without this project's dependencies.
    """
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(jupyter_dir / "kernels" / "python3")
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")])))
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    patch.setenv("SMOKE_TEST", "1")
    yield
    patch.undo()


def test_the_tutorials_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_smoke_mode(path, smoke_kernel_env):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()  # raises CellExecutionError, naming the cell and its traceback, if any cell fails
    assert _smoke_line(nb) == "SMOKE_TEST: True", "the kernel must see SMOKE_TEST=1"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_in_full_mode(path):
    """Committed with outputs (readable on GitHub): every code cell ran, in order, none failed, figures present."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run top to bottom in one kernel"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert _smoke_line(nb) == "SMOKE_TEST: False", "commit the full run, not the smoke run"


def test_readme_links_every_tutorial():
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        assert f"(tutorials/{name}.ipynb)" in readme


def _smoke_line(nb) -> str | None:
    """The line each notebook prints first, saying whether it ran in smoke mode."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("SMOKE_TEST:"):
                    return line
    return None
