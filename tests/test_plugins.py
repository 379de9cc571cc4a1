"""Plugins: a prior from a file passed with --plugin, components of an installed package (entry points), a user's
estimator, and the record a run keeps so that evaluate, plot and --resume find its plugins again.

Every command of the end-to-end test is a separate ``python -m pyro_vae`` process, so nothing registered in one
can leak into the next: what the later ones know of the plugin they found from the run's record. Truths: the
uninterrupted run (a resumed run ends with its metrics, byte for byte, so the plugin rebuilt the same prior),
the KL kind the Student-t prior must get (no KL to a Normal guide is registered: Monte Carlo), a marker file the
plugin writes when imported (a run from elsewhere must not import it), and the closed-form ELBO of the
linear-Gaussian model (a registered estimator's value, in expectation).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import ESTIMATORS, PRIORS, TrainConfig, VAEConfig, build, train
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.estimators import register_estimator
from pyro_vae.linear_gaussian import exact_elbo
from pyro_vae.named import Registry
from pyro_vae.plugins import load_plugin, require_plugins, trusted_plugins_file

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "student_t_prior.py"
SMALL = ["--z-dim", "2", "--hidden", "32", "--batch-size", "256", "--threads", "1", "--no-progress"]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m pyro_vae ARGS`` in a fresh process (one thread, no display)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env}
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """A 2-epoch run of the plugin's prior, trained in its own process; the plugin's marker file counts imports."""
    root = tmp_path_factory.mktemp("plugin_run")
    env = {"XDG_CONFIG_HOME": str(root / "config"), "STUDENT_T_MARKER": str(root / "marker")}
    out = root / "run"
    args = ["train", "--plugin", str(PLUGIN), "--prior", "student-t", "--prior-df", "2.5", "--epochs", "2"]
    proc = cli(*args, "--out", str(out), *SMALL, env=env)
    assert proc.returncode == 0, proc.stderr
    return root, out, env


@pytest.mark.slow
def test_a_plugin_prior_trains_evaluates_plots_and_resumes_in_separate_processes(plugin_run, tmp_path):
    root, out, env = plugin_run
    work = tmp_path / "run"
    shutil.copytree(out, work)
    config = json.loads((work / "config.json").read_text())
    assert config["plugins"] == {"prior:student-t": str(PLUGIN)}
    assert config["model"]["options"] == {"prior": {"df": 2.5}}
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kl"] == {"z": "monte-carlo"}  # the Student-t prior is in use: no registered KL
    for args in (["evaluate", str(work), "--num-samples", "20"], ["plot", str(work)]):
        proc = cli(*args, env=env)  # no --plugin: found from the run's record
        assert proc.returncode == 0, proc.stderr
    assert json.loads((work / "evaluation.json").read_text())["num_samples"] == 20
    assert (work / "manifold.png").stat().st_size > 0
    proc = cli("train", "--out", str(work), "--resume", "--epochs", "3", "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (root / "marker").read_text().count("imported") == 4  # train, evaluate, plot, resume: each imported it

    # The same 3 epochs uninterrupted, in this process: the resumed run must end with exactly its metrics.
    load_plugin(str(PLUGIN))
    try:
        model = {"z_dim": 2, "hidden": (32,), "prior": "student-t", "options": {"prior": {"df": 2.5}}}
        whole = TrainConfig.from_options(model, {"batch_size": 256, "threads": 1, "epochs": 3})
        train(whole, tmp_path / "whole", progress=False, figures=False)
    finally:
        del PRIORS["student-t"]
    assert (work / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_run_never_imports_a_plugin_you_have_not_loaded_and_says_what_to_pass(plugin_run, tmp_path):
    root, out, env = plugin_run
    stranger = {**env, "XDG_CONFIG_HOME": str(tmp_path / "other-user"), "STUDENT_T_MARKER": str(tmp_path / "m")}
    proc = cli("evaluate", str(out), env=stranger)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        f"pyro-vae: error: the run's prior 'student-t' comes from the plugin {PLUGIN}, which you have not loaded on "
        f"this machine; pass --plugin {PLUGIN} if you trust it (a run never imports code by itself)\n"
    )
    assert not (tmp_path / "m").exists()  # refused before anything of the plugin ran
    proc = cli("evaluate", str(out), "--num-samples", "5", "--plugin", str(PLUGIN), env=stranger)
    assert proc.returncode == 0, proc.stderr


def test_each_missing_plugin_is_one_line_naming_what_to_install_or_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDENT_T_MARKER", str(tmp_path / "marker"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "a-new-user"))  # who has loaded no plugin yet
    cases = {
        str(tmp_path / "gone.py"): f"comes from the plugin {tmp_path / 'gone.py'}, which is not there; pass --plugin",
        "__main__": "was registered by the script that trained it; register it again before loading the run",
        "entry-point:pyro-vae-ghosts": "comes from the package pyro-vae-ghosts, which is not installed; pip install",
        str(PLUGIN): f"comes from the plugin {PLUGIN}, which you have not loaded on this machine; pass --plugin",
    }
    for source, message in cases.items():
        with pytest.raises(UserError, match="^the run's prior 'ghost' " + re.escape(message)):
            require_plugins({"prior:ghost": source})
    assert not (tmp_path / "marker").exists()
    require_plugins({"prior:standard": "__main__"})  # registered already: nothing to import


def test_missing_and_failing_plugins_are_one_line(tmp_path, capsys):
    assert main(["train", "--plugin", str(tmp_path / "nope.py"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        f"pyro-vae: error: plugin file {tmp_path / 'nope.py'} does not exist; give a .py file or an importable "
        "module name\n"
    )
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("x = 1 / 0\n")
    assert main(["evaluate", "--plugin", str(bad), str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"pyro-vae: error: plugin {bad} failed to import: ZeroDivisionError: division by zero\n"
    )
    assert main(["plot", "--plugin", "no_such_module_anywhere", str(tmp_path)]) == 2
    assert "plugin module 'no_such_module_anywhere' is not importable" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_loaded_plugin_is_remembered_by_its_resolved_path(tmp_path):
    plugin = tmp_path / "tiny_prior.py"
    plugin.write_text(
        "from pyro_vae import register_prior\nfrom pyro_vae.models.priors import StandardNormalPrior\n"
        "register_prior('tiny-standard', lambda c: StandardNormalPrior(c.z_dim))\n"
    )
    try:
        load_plugin(str(plugin))
        assert PRIORS.source("tiny-standard") == str(plugin.resolve())
        assert str(plugin.resolve()) in json.loads(trusted_plugins_file().read_text())["files"]
        assert PRIORS.source("standard") is None  # built in: nothing to record
    finally:
        del PRIORS["tiny-standard"]


def installed_package(site: Path, entry_points: str) -> None:
    """A package "tinyplugin" installed in ``site`` as pip would leave it: the module and its .dist-info."""
    (site / "tinyplugin").mkdir(parents=True)
    (site / "tinyplugin" / "__init__.py").write_text(
        "from pyro.infer import Trace_ELBO\n"
        "from pyro_vae.models.decoders import LinearDecoder\n\n"
        "def make_decoder(config):\n    return LinearDecoder(config.z_dim, config.x_shape)\n\n"
        "class TraceCopy(Trace_ELBO):\n    '''Trace_ELBO, registered by an installed package.'''\n"
    )
    info = site / "tinyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


ENTRY_POINTS = """[pyro_vae.decoders]
tiny-linear = tinyplugin:make_decoder

[pyro_vae.estimators]
trace-copy = tinyplugin:TraceCopy
"""


def test_entry_points_of_an_installed_package_are_found(tmp_path, monkeypatch):
    installed_package(tmp_path, ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    decoders = Registry("decoder", {}, entry_points="pyro_vae.decoders")  # a fresh registry reads the metadata now
    assert list(decoders) == ["tiny-linear"] and decoders.source("tiny-linear") == "entry-point:tinyplugin"
    model = decoders["tiny-linear"](VAEConfig(x_dim=6, z_dim=2))
    assert model.weight.shape == (6, 2)
    (tmp_path / "tinyplugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[pyro_vae.decoders]\nbroken = tinyplugin.missing:make\n"
    )
    with pytest.raises(UserError) as err:
        list(Registry("decoder", {}, entry_points="pyro_vae.decoders"))
    assert str(err.value) == (
        "the installed package 'tinyplugin' failed to load its decoder 'broken' (tinyplugin.missing:make): "
        "ModuleNotFoundError: No module named 'tinyplugin.missing'; fix or uninstall it (pip uninstall tinyplugin)"
    )


@pytest.mark.slow
def test_an_installed_packages_decoder_and_estimator_train_and_a_run_names_the_package(tmp_path):
    site = tmp_path / "site"
    installed_package(site, ENTRY_POINTS)
    env = {"PYTHONPATH": str(site), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = cli("train", "--help", env=env)
    assert re.search(r"--decoder \{mlp,[a-z,-]*,tiny-linear\}", proc.stdout) and "trace-copy" in proc.stdout
    out = tmp_path / "run"
    proc = cli(
        "train", "--out", str(out), "--decoder", "tiny-linear", "--elbo", "trace-copy", "--epochs", "1", *SMALL, env=env
    )
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((out / "config.json").read_text())["plugins"]
    assert recorded == {
        "decoder:tiny-linear": "entry-point:tinyplugin",
        "estimator:trace-copy": "entry-point:tinyplugin",
    }
    proc = cli("evaluate", str(out), "--num-samples", "5", env={"XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]})
    assert proc.returncode == 2
    assert proc.stderr == (
        "pyro-vae: error: the run's decoder 'tiny-linear' comes from the package tinyplugin, which is not installed; "
        "pip install tinyplugin\n"
    )


def test_a_registered_estimator_trains_and_estimates_the_elbo(tmp_path):
    """A user's estimator by name: its value averages to the linear-Gaussian model's closed-form ELBO."""

    @register_estimator("user-trace", gradient="as Trace_ELBO's")
    class UserTrace(Trace_ELBO):
        """Trace_ELBO under a name of the user's."""

    try:
        spec = ESTIMATORS["user-trace"]
        assert (spec.value, spec.gradient, spec.estimates) == (
            "Trace_ELBO under a name of the user's.",
            "as Trace_ELBO's",
            "ELBO",
        )
        model, guide = build(VAEConfig(x_dim=4, z_dim=2, decoder="linear", likelihood="gaussian", hidden=(8,)))
        x = torch.randn(16, 4)
        elbo = spec.make(num_particles=1, max_plate_nesting=1)
        values = np.array([-elbo.loss(model, guide, x) for _ in range(400)])
        exact = float(exact_elbo(model, guide, x).sum().detach())
        assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / math.sqrt(len(values))
        config = TrainConfig.from_options(
            {"z_dim": 2, "hidden": (16,)}, {"elbo": "user-trace", "epochs": 1, "threads": 1}
        )
        result = train(config, tmp_path / "run", progress=False, figures=False)
        assert result.config.plugins == {"estimator:user-trace": __name__}
    finally:
        del ESTIMATORS["user-trace"]
