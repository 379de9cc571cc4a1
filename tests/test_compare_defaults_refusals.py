"""``compare-estimators``' default estimator list on a model that some defaults refuse: a 2-layer hierarchical run,
whose guide samples z1 given z2, which ``jit-stl`` cannot handle (its compiled log q at fixed parameters would need
the guide run again). Each refusing default is skipped in one line; a user-named one is still an error."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.estimators import ESTIMATORS
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_defaults_that_refuse_a_hierarchical_guide_are_skipped_in_one_line_and_named_ones_still_fail(tmp_path, capsys):
    run = tmp_path / "hier"
    small = ["--epochs", "1", "--hidden", "16", "--no-progress", "--batch-size", "256"]
    assert main(["train", "--model", "hierarchical", "--layers", "2", "--out", str(run), *small]) == 0
    capsys.readouterr()
    args = ["--draws", "3", "--examples", "4", "--ll-samples", "20", "--snr-ks", "2", "--no-progress"]
    assert main(["compare-estimators", str(run), *args]) == 0
    err = capsys.readouterr().err
    skips = [line for line in err.splitlines() if line.startswith("pyro-vae: skipping default estimator")]
    assert len(skips) == 1 and skips[0].startswith("pyro-vae: skipping default estimator jit-stl: "), err
    assert "depend on earlier ones" in skips[0]
    rows = [r["name"] for r in json.loads((run / "estimators.json").read_text())["estimators"]]
    assert rows == [n for n in ESTIMATORS.names() if ESTIMATORS[n].works_with(False) and n != "jit-stl"]
    # Named, the same estimator is an error in one line, and the comparison already written is kept.
    before = (run / "estimators.json").read_text()
    assert main(["compare-estimators", str(run), *args, "--estimators", "stl,jit-stl"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pyro-vae: error:")]
    assert len(errors) == 1 and "depend on earlier ones" in errors[0], errors
    assert (run / "estimators.json").read_text() == before
