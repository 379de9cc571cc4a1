"""A run's importance-sampling scores, kept per epoch: what ``pyro_vae.gap_trend`` fits the gap's trend to.

``pyro-vae evaluate`` (and ``benchmarks/mnist_nll.py``) write, beside the run's ``evaluation.json`` (which describes
the current checkpoint only and goes when the run is resumed), one small JSON file per scored epoch in RUN/scores/:
each test image's ELBO and IS log p(x), in the order of the test set. Scores of the same checkpoint kind, K and
number of images are of the same images, so their differences are paired by image. They outlive a resume (they
describe epochs that stay in the run's history) and go with ``--overwrite`` (another run). A score also records the
run's test ELBO at its epoch, and is used only while ``metrics.jsonl`` still has that value at that epoch: a score
left from another run in the same directory can never be mixed into this one's.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.atomic import atomic_write_text

__all__ = ["SCORES", "Score", "read_scores", "remove_scores", "score_name", "write_score"]

#: The folder of a run directory that holds the scores.
SCORES = "scores"
_NAME = re.compile(r"epoch-\d{5,}-(last|best)-k\d+-n\d+\.json")


@dataclass(frozen=True)
class Score:
    """One scored epoch: each test image's ELBO and IS log p(x) (nats), the images in test-set order."""

    epoch: int
    checkpoint: str
    num_samples: int
    elbo: list[float]
    log_px: list[float]
    test_elbo: float  # the run's test ELBO (metrics.jsonl) at ``epoch``, which ties the score to this run


def score_name(epoch: int, checkpoint: str, num_samples: int, num_examples: int) -> str:
    """The file name of a score: ``epoch-00298-last-k5000-n500.json``."""
    return f"epoch-{epoch:05d}-{checkpoint}-k{num_samples}-n{num_examples}.json"


def write_score(
    run_dir: str | Path,
    *,
    epoch: int,
    checkpoint: str,
    num_samples: int,
    elbo: Sequence[float],
    log_px: Sequence[float],
    test_elbo: float,
) -> Path:
    """Write one score to RUN/scores/ (atomically; a score of the same epoch, checkpoint, K and images is
    replaced) and return its path."""
    if len(elbo) != len(log_px) or len(elbo) == 0:
        raise ValueError(f"a score needs one ELBO and one log p(x) per image, got {len(elbo)} and {len(log_px)}")
    folder = Path(run_dir) / SCORES
    folder.mkdir(exist_ok=True)
    path = folder / score_name(epoch, checkpoint, num_samples, len(elbo))
    record = {
        "epoch": epoch,
        "checkpoint": checkpoint,
        "num_samples": num_samples,
        "test_elbo": test_elbo,
        "elbo": [float(v) for v in elbo],
        "log_px": [float(v) for v in log_px],
    }
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


def _read(path: Path) -> Score:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        score = Score(
            epoch=int(record["epoch"]),
            checkpoint=str(record["checkpoint"]),
            num_samples=int(record["num_samples"]),
            elbo=[float(v) for v in record["elbo"]],
            log_px=[float(v) for v in record["log_px"]],
            test_elbo=float(record["test_elbo"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a score written by pyro-vae evaluate ({err}); remove it") from None
    if len(score.elbo) != len(score.log_px) or not all(map(math.isfinite, score.elbo + score.log_px)):
        raise ValueError(f"{path} is damaged (its ELBO and log p(x) lists differ in length or are not finite)")
    return score


def read_scores(
    run_dir: str | Path,
    *,
    checkpoint: str,
    num_samples: int,
    num_examples: int,
    metrics: Sequence[dict[str, Any]],
) -> list[Score]:
    """The run's scores of ``checkpoint``, K = ``num_samples`` and the first ``num_examples`` test images, by epoch,
    each only while ``metrics`` (the run's metrics.jsonl records) has its test ELBO at its epoch (module docstring).
    A damaged score file is a ValueError naming it."""
    folder = Path(run_dir) / SCORES
    if not folder.is_dir():
        return []
    test_elbo = {m.get("epoch"): m.get("test_elbo") for m in metrics}
    tail = f"-{checkpoint}-k{num_samples}-n{num_examples}.json"
    scores = []
    for path in sorted(folder.iterdir()):
        if not (_NAME.fullmatch(path.name) and path.name.endswith(tail)):
            continue
        score = _read(path)
        if test_elbo.get(score.epoch) != score.test_elbo:
            continue  # not this run's history (another run's, or an epoch the run no longer has)
        scores.append(score)
    return sorted(scores, key=lambda s: s.epoch)


def remove_scores(run_dir: str | Path) -> None:
    """Remove a run's score files, and their folder once empty (a fresh run, ``--overwrite``)."""
    folder = Path(run_dir) / SCORES
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not if someone put other files there
        folder.rmdir()
