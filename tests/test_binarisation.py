"""Fixed ("static") binarisation, ``TrainConfig.binarization="fixed"``: one Bernoulli draw of the grey training images
for the whole run, calibrated, the same with or without a validation hold-out, seen by every epoch, kept by resume and
by ``load_run``; dynamic binarisation (the default) is in tests/test_data.py."""

from __future__ import annotations

import pytest
import torch
from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood

from pyro_vae import TrainConfig
from pyro_vae.data import VAEData, load_data
from pyro_vae.errors import UserError
from pyro_vae.presets import get_preset
from pyro_vae.run_dir import CHECKPOINT, load_checkpoint, load_run
from pyro_vae.training import train
from pyro_vae.validation import hold_out
from tests.helpers import power_cut_at_step


def fixed(data: VAEData) -> VAEData:
    data.prepare(BernoulliLikelihood(), "fixed")
    return data


def test_fixed_draw_is_binary_calibrated_and_the_same_every_epoch():
    data = fixed(load_data("digits"))
    assert data.binarize and data.fixed_binarization
    first = data.train_epoch()
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert all(torch.equal(first, data.train_epoch()) for _ in range(3))  # one draw, not one per epoch
    # Calibration against the pixel values themselves: the digits take the 17 grey levels k / 16. Among the pixels at
    # level p, the fraction drawn as 1 is p within 4 binomial standard errors (sqrt(p (1 - p) / n)), level by level.
    p = data.train_x
    for k in range(1, 16):
        at = (p - k / 16).abs() < 1e-6
        n = int(at.sum())
        se = (k / 16 * (1 - k / 16) / n) ** 0.5
        assert abs(first[at].mean().item() - k / 16) < 4 * se, (k, n)
    assert torch.equal(first[p == 0], torch.zeros_like(first[p == 0]))
    assert torch.equal(first[p == 1], torch.ones_like(first[p == 1]))
    # A second prepare() draws the same images again: the seed is a constant of the project, not the run's.
    assert torch.equal(fixed(load_data("digits")).train_epoch(), first)


def test_fixed_draw_leaves_the_training_stream_alone_and_ignores_a_validation_hold_out():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    whole = fixed(load_data("digits")).train_epoch()
    assert torch.equal(torch.get_rng_state(), before)  # a private generator: shuffling and z draws are unchanged
    for split in ("last", "random"):
        rest, _ = hold_out(load_data("digits"), 300, split, seed=5)
        kept = rest.kept_rows[0]
        # Each remaining image keeps its whole-set draw, so load_run (no hold-out) sees the images training saw.
        assert torch.equal(fixed(rest).train_epoch(), whole[kept]), split


def test_dynamic_is_the_default_and_other_likelihoods_are_untouched():
    data = load_data("digits")
    data.prepare(BernoulliLikelihood())
    assert not data.fixed_binarization
    torch.manual_seed(0)
    assert not torch.equal(data.train_epoch(), data.train_epoch())
    grey = load_data("digits")
    grey.prepare(GaussianLikelihood(), "fixed")
    assert not grey.binarize and torch.equal(grey.train_epoch(), grey.train_x)


def config(epochs: int, **options) -> TrainConfig:
    base = dict(z_dim=2, hidden=(16,), batch_size=256, threads=1, checkpoint_seconds=0, epochs=epochs)
    return TrainConfig.for_data(load_data("digits"), **{**base, "binarization": "fixed", **options})


def run(cfg, out, **kwargs):
    return train(cfg, out, progress=False, figures=False, **kwargs)


def test_training_sees_the_one_draw_every_epoch(tmp_path, monkeypatch):
    whole = fixed(load_data("digits")).train_epoch()
    seen = []
    original = VAEData.train_epoch
    monkeypatch.setattr(VAEData, "train_epoch", lambda self: seen.append(original(self)) or seen[-1])
    run(config(3, validation=200, validation_split="last"), tmp_path / "f")
    monkeypatch.undo()
    assert len(seen) == 3 and all(torch.equal(x, whole[:-200]) for x in seen)
    # load_run's data (the whole training set) holds the same draw.
    loaded = load_run(tmp_path / "f")
    assert loaded.config.binarization == "fixed" and torch.equal(loaded.data.train_epoch(), whole)


def test_vamp_pseudo_inputs_start_at_the_fixed_binary_images(tmp_path, monkeypatch):
    from pyro_vae.models.priors.vamp import VampPrior

    given = []
    original = VampPrior.init_from_data
    monkeypatch.setattr(VampPrior, "init_from_data", lambda self, x, **kw: given.append(x) or original(self, x, **kw))
    options = {"prior": "vamp", "options": {"prior": {"components": 5, "init_from_data": True}}}
    run(config(1, **options), tmp_path / "v")
    # The images training sees (the fixed draw), not the grey ones: Tomczak & Welling's init on static MNIST.
    assert len(given) == 1 and torch.equal(given[0], fixed(load_data("digits")).train_epoch())


def test_crash_then_resume_equals_uninterrupted_and_differs_from_dynamic(tmp_path, monkeypatch):
    run(config(3), tmp_path / "full")
    with power_cut_at_step(monkeypatch, 8):  # 6 steps per epoch (1,500 examples, batch 256): epoch 2, step 2
        run(config(3), tmp_path / "cut")
    run(config(3), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    a, b = load_checkpoint(tmp_path / "full" / CHECKPOINT), load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # The option reaches training: the same run with dynamic binarisation ends elsewhere.
    run(config(3, binarization="dynamic"), tmp_path / "dyn")
    c = load_checkpoint(tmp_path / "dyn" / CHECKPOINT)
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def test_presets_and_bad_values():
    # Tomczak & Welling's -85.57 and pythae's reproduction are on fixed-binarisation MNIST; Burda et al. redraw.
    assert get_preset("tomczak2018").train["binarization"] == "fixed"
    assert get_preset("pythae").train["binarization"] == "fixed"
    assert get_preset("burda2016").train["binarization"] == "dynamic"
    with pytest.raises(UserError, match="binarization must be one of dynamic, fixed, got 'static'"):
        TrainConfig(binarization="static")
    with pytest.raises(UserError, match="binarization must be one of dynamic, fixed"):
        load_data("digits").prepare(BernoulliLikelihood(), "once")


def test_a_users_own_model_and_guide_get_the_fixed_draw_too(tmp_path):
    from tests.test_user_pair import BareVAE

    vae = BareVAE()
    cfg = TrainConfig(dataset="digits", epochs=1, batch_size=100, threads=1, binarization="fixed")
    result = train(cfg, tmp_path / "pair", model=vae.model, guide=vae.guide, progress=False, figures=False)
    assert result.data.fixed_binarization
    assert torch.equal(result.data.train_epoch(), fixed(load_data("digits")).train_epoch())
