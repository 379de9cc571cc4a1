"""The installed package claims one top-level import name, ``pyro_vae``: the repository's models/ and guides/
folders are installed as ``pyro_vae.models`` and ``pyro_vae.guides`` (pyproject.toml's package-dir mapping).

The wheel is built from this checkout (``pip wheel --no-build-isolation``: the setuptools of the test
environment, no download) and read as the zip file it is, then installed into a folder and imported from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"pyro_vae": "pyro_vae", "models": "pyro_vae/models", "guides": "pyro_vae/guides"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
        env=env,
        capture_output=True,
    )
    (path,) = out.glob("pyro_vae-*.whl")
    return path


@pytest.mark.slow
def test_the_wheels_top_level_is_pyro_vae_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"pyro_vae"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["pyro_vae"]


@pytest.mark.slow
def test_the_wheel_holds_every_source_file_under_its_namespaced_name(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in SOURCES.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected - names == set()  # a package folder missing from pyproject.toml's list would show here


@pytest.mark.slow
def test_the_installed_wheel_imports_models_and_guides_from_inside_pyro_vae(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import importlib.util, sys, pyro_vae.models, pyro_vae.guides, pyro_vae\n"
        "print(pyro_vae.models.__file__); print(pyro_vae.guides.__file__)\n"
        "print(importlib.util.find_spec('models') is None and importlib.util.find_spec('guides') is None)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    models_file, guides_file, no_top_level = out.stdout.split()
    assert Path(models_file) == target / "pyro_vae" / "models" / "__init__.py"
    assert Path(guides_file) == target / "pyro_vae" / "guides" / "__init__.py"
    assert no_top_level == "True"
