"""A run's IS scores per epoch (``pyro_vae.score_history``): used only while they are the run's own history."""

from __future__ import annotations

import pytest

from pyro_vae.score_history import read_scores, remove_scores, write_score


def test_a_score_is_read_back_only_while_the_runs_curve_has_its_test_elbo(tmp_path):
    """Scores at epochs 2 and 4 of a run whose metrics say -100.5 and -99.0: both read back, in epoch order, with
    their numbers; after the run is replaced by another whose epoch 4 is -98.7 (and which has no epoch 2 line), the
    old scores are not this run's and are not used; other K, images or checkpoint are other series."""
    write_score(
        tmp_path, epoch=4, checkpoint="last", num_samples=10, elbo=[-99.0, -98.0], log_px=[-95, -94], test_elbo=-99.0
    )
    write_score(
        tmp_path, epoch=2, checkpoint="last", num_samples=10, elbo=[-101, -100], log_px=[-96, -95], test_elbo=-100.5
    )
    metrics = [{"epoch": 1, "test_elbo": -103.0}, {"epoch": 2, "test_elbo": -100.5}, {"epoch": 4, "test_elbo": -99.0}]
    scores = read_scores(tmp_path, checkpoint="last", num_samples=10, num_examples=2, metrics=metrics)
    assert [s.epoch for s in scores] == [2, 4] and scores[1].log_px == [-95.0, -94.0]
    assert read_scores(tmp_path, checkpoint="last", num_samples=20, num_examples=2, metrics=metrics) == []
    assert read_scores(tmp_path, checkpoint="last", num_samples=10, num_examples=3, metrics=metrics) == []
    assert read_scores(tmp_path, checkpoint="best", num_samples=10, num_examples=2, metrics=metrics) == []
    other_run = [{"epoch": 4, "test_elbo": -98.7}]
    assert read_scores(tmp_path, checkpoint="last", num_samples=10, num_examples=2, metrics=other_run) == []


def test_remove_scores_leaves_what_it_did_not_write(tmp_path):
    write_score(tmp_path, epoch=3, checkpoint="best", num_samples=5, elbo=[-1.0], log_px=[-0.5], test_elbo=-1.0)
    (tmp_path / "scores" / "notes.txt").write_text("mine")
    remove_scores(tmp_path)
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["notes.txt"]
    (tmp_path / "scores" / "notes.txt").unlink()
    remove_scores(tmp_path)
    assert not (tmp_path / "scores").exists()


def test_a_score_needs_one_elbo_and_log_px_per_image(tmp_path):
    with pytest.raises(ValueError, match="one ELBO and one log p"):
        write_score(
            tmp_path, epoch=1, checkpoint="last", num_samples=5, elbo=[-1.0, -2.0], log_px=[-0.5], test_elbo=-1.0
        )
