"""Sphinx configuration of the documentation site: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

The pages are the Markdown files of docs/ (myst-parser), the tutorials are the executed notebooks of tutorials/
(copied into docs/tutorials/, git-ignored, at each build), rendered as they are stored, never re-executed (myst-nb
with ``nb_execution_mode = "off"``), and the API reference comes from the docstrings (sphinx.ext.autodoc + napoleon).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# autodoc imports the installed package (pip install -e ".[docs]"): pyro_vae.models and pyro_vae.guides exist only
# as installed (pyproject.toml's package-dir).

# The notebooks live in tutorials/, outside this source folder, and Sphinx reads documents only inside it (a symbolic
# link does not do: Sphinx resolves it, and the links to the notebooks then point outside). A fresh copy each build.
_TUTORIALS = Path(__file__).resolve().parent / "tutorials"
shutil.rmtree(_TUTORIALS, ignore_errors=True)
_TUTORIALS.mkdir()
for _notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(_notebook, _TUTORIALS / _notebook.name)

project = "pyro-vae"
author = "the pyro-vae authors"
copyright = "the pyro-vae authors"

extensions = [
    "myst_nb",  # Markdown pages (it includes myst-parser) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the Google-style "Args:" / "Returns:" / "Raises:" sections of the docstrings
    "sphinx.ext.mathjax",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorials/.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# The notebooks are executed and checked by tests/test_notebooks.py; the site shows their stored outputs.
nb_execution_mode = "off"
# Links between pages use GitHub's heading anchors (cli.md#threads-one-rule-for-every-command): myst makes the same
# slugs for headings down to this level, so Sphinx resolves and checks them (-W fails on a broken one).
myst_heading_anchors = 4
myst_enable_extensions = ["dollarmath", "amsmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# ignore-module-all: a module's __all__ also names what it re-exports (pyro_vae.training's TrainConfig); each name is
# documented once, under the module that defines it.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = "pyro-vae"

# "Fields:" is the project's section for a dataclass's fields (pyro_vae.commands.options.field_docs reads it for
# the command line's help): rendered like "Args:".
napoleon_custom_sections = [("Fields", "params_style")]


def _site_paths(app: object, docname: str, source: list[str]) -> None:
    """The pages link to the notebooks as ``../tutorials/NAME.ipynb``, right on GitHub and in a checkout; in the site
    the notebooks are the documents ``tutorials/NAME`` (their copies in docs/tutorials), so the links point there,
    and a link to a notebook that does not exist still fails the build."""
    if not docname.startswith("tutorials/"):
        source[0] = source[0].replace("](../tutorials/", "](tutorials/")
    else:  # a notebook links to the pages as ../docs/NAME.md; its copy lies in docs/tutorials
        source[0] = source[0].replace("](../docs/", "](../")


def _fields_first(app: object, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """A component's options dataclass starts its docstring with "Fields:" (registry.py's convention, which
    ``field_docs`` reads for the command line's help); after Python strips the indentation, its entries stand level
    with the heading. Indent them under it, as in the classes whose docstring has a summary line first, so napoleon
    reads the section."""
    if lines and lines[0].strip() == "Fields:":
        end = next((i for i, line in enumerate(lines[1:], 1) if not line.strip()), len(lines))
        lines[1:end] = ["    " + line for line in lines[1:end]]


def setup(app: object) -> None:
    app.connect("source-read", _site_paths)
    app.connect("autodoc-process-docstring", _fields_first, priority=400)  # before napoleon's (500)
