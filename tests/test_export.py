"""``pyro-vae export``: a bundle loads to the same model outputs as the run; a tampered bundle is refused in one
line; the best checkpoint can be exported."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.bundle import MANIFEST, WEIGHTS, read_bundle
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.run_dir import load_run
from pyro_vae.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    config = TrainConfig.for_data(
        load_data("digits"), z_dim=2, hidden=(16,), batch_size=256, threads=1, epochs=2, validation=100
    )
    train(config, out, progress=False, figures=False)
    return out


def outputs(run, x):
    torch.manual_seed(0)
    loc, scale = run.guide.loc_scale(x)
    return loc, scale, run.model.decoder(loc)


def test_export_then_load_gives_the_same_outputs(trained, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(trained), str(bundle)]) == 0
    assert {p.name for p in bundle.iterdir()} == {
        "weights.safetensors",
        "config.json",
        "run.json",
        "README.md",
        MANIFEST,
    }
    original, loaded = load_run(trained), load_run(bundle, with_data=False)
    x = original.data.test_x_eval[:50]
    for a, b in zip(outputs(original, x), outputs(loaded, x), strict=True):
        assert torch.equal(a, b)
    assert loaded.epoch == 2 and loaded.metrics == original.metrics
    card = (bundle / "README.md").read_text()
    assert f"{original.metrics[-1]['test_elbo']:.4f}" in card and "load_run" in card
    # the data recorded with the bundle load and are checked against its digest
    assert load_run(bundle).data.test_x.shape == original.data.test_x.shape


def test_tampered_bundle_is_refused_in_one_line(trained, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(trained), str(bundle)]) == 0
    data = bytearray((bundle / WEIGHTS).read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (bundle / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(UserError, match="weights.safetensors does not match its SHA-256") as err:
        load_run(bundle, with_data=False)
    assert "\n" not in str(err.value)
    assert main(["evaluate", str(bundle), "--ll-samples", "2"]) == 2  # the command line: one line, exit 2
    assert "does not match its SHA-256" in capsys.readouterr().err
    (bundle / MANIFEST).write_text((bundle / MANIFEST).read_text().replace("config.json", "other.json"))
    with pytest.raises(UserError, match="does not list config.json"):
        read_bundle(bundle)


def test_export_best_and_refusals(trained, tmp_path, capsys):
    best = tmp_path / "best"
    assert main(["export", str(trained), str(best), "--which", "best"]) == 0
    assert load_run(best, with_data=False).epoch == load_run(trained, which="best", with_data=False).epoch
    assert main(["export", str(trained), str(best)]) == 2  # a bundle is there already
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(trained), str(best), "--overwrite"]) == 0
    assert main(["export", str(trained), str(trained)]) == 2
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "b2")]) == 2
