"""Bad input, hostile files and diverging training, through the real command line.

Every case runs ``python -m pyro_vae ...`` as a subprocess (several at a time) and must end with exactly
one line on stderr, ``pyro-vae: error: <what is wrong; how to fix it>``, exit code 2, no traceback, and
every file already in the run directory unchanged (bytes and modification time). Checkpoints crafted
to run code when unpickled must be refused without running it: the file their payload would create
must not exist afterwards, although loading the same file with plain ``torch.load`` does create it.
The Python API raises the same messages (``ValueError``; ``UserError`` is one).
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.config import VAEConfig
from pyro_vae.data import load_data
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.run_dir import CHECKPOINT, load_checkpoint, load_run
from pyro_vae.training import TrainConfig, train

pytestmark = pytest.mark.slow  # ~40 CLI processes (torch import each): about a minute on 2 idle cores

REPO = Path(__file__).resolve().parent.parent
#: Training options that keep every run tiny: a 1-epoch base run takes well under a second.
TINY = ("--hidden", "8", "--batch-size", "256", "--threads", "1", "--no-progress")


@dataclass(frozen=True)
class Case:
    """One command line and what its one-line error must contain.

    ``{name}`` in ``args`` is replaced by a path of the workspace; ``{run}`` by a fresh copy of a trained
    run (config.json, metrics.jsonl, checkpoint.pt) whose files must come out unchanged; ``{new}`` by a
    path that does not exist yet.
    """

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    unprivileged: bool = False  # run without root's power to ignore file permissions
    env: tuple[tuple[str, str], ...] = ()


CASES = [
    # --- options -------------------------------------------------------------------------------------
    Case("epochs-0", ("train", "--out", "{run}", "--epochs", "0"), ("epochs must be an integer >= 1, got 0",)),
    Case(
        "eval-every-0", ("train", "--out", "{run}", "--eval-every", "0"), ("eval_every must be an integer >= 1, got 0",)
    ),
    Case(
        "checkpoint-seconds-negative",
        ("train", "--out", "{run}", "--checkpoint-seconds", "-1"),
        ("checkpoint_seconds must be a finite number >= 0, got -1.0",),
    ),
    Case("epochs-neg", ("train", "--out", "{run}", "--epochs", "-1"), ("epochs must be an integer >= 1, got -1",)),
    Case("batch-0", ("train", "--out", "{run}", "--batch-size", "0"), ("batch_size must be an integer >= 1, got 0",)),
    Case(
        "batch-abc",
        ("train", "--out", "{run}", "--batch-size", "abc"),
        ("argument --batch-size: invalid int value: 'abc'", "see 'pyro-vae train --help'"),
    ),
    Case("lr-neg", ("train", "--out", "{run}", "--lr", "-1"), ("lr must be a finite number > 0, got -1.0",)),
    Case("lr-nan", ("train", "--out", "{run}", "--lr", "nan"), ("lr must be a finite number > 0, got nan",)),
    Case("z-dim-0", ("train", "--out", "{run}", "--z-dim", "0"), ("z_dim must be an integer >= 1, got 0",)),
    Case("beta-neg", ("train", "--out", "{run}", "--beta", "-1"), ("beta must be a finite number >= 0, got -1.0",)),
    Case(
        "particles-0",
        ("train", "--out", "{run}", "--particles", "0"),
        ("particles must be an integer >= 1, got 0",),
    ),
    Case("prior", ("train", "--out", "{run}", "--prior", "nope"), ("unknown prior 'nope'; choose one of:", "standard")),
    Case(
        "likelihood",
        ("train", "--out", "{run}", "--likelihood", "nope"),
        ("unknown likelihood 'nope'; choose one of:", "bernoulli"),
    ),
    Case("elbo", ("train", "--out", "{run}", "--elbo", "nope"), ("unknown elbo 'nope'; choose one of:", "meanfield")),
    Case(
        "dataset-name",
        ("train", "--out", "{run}", "--dataset", "imagenet"),
        ("unknown dataset 'imagenet'", "digits, mnist, fashion-mnist, static-mnist, a path"),
    ),
    # --- the user's data (over an existing run with --overwrite: a bad file must not cost the old run) ----
    Case(
        "data-missing",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{missing_npy}"),
        ("dataset file", "does not exist"),
    ),
    Case(
        "data-empty-file",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{empty_npy}"),
        ("could not read dataset file", "No data left in file", "numpy.save"),
    ),
    Case(
        "data-text",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{text_npy}"),
        ("could not read dataset file", "as a plain numeric .npy array"),
    ),
    Case(
        "data-objects",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{objects_npy}"),
        ("could not read dataset file", "holds pickled Python objects, which are never loaded"),
    ),
    Case(
        "data-vector",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{vector_npy}"),
        ("has shape (10,); give (N, D) rows, (N, H, W) grey images",),
    ),
    Case(
        "data-nan",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{nan_npy}"),
        ("has NaN or infinite values in 1 example(s); remove or fix them",),
    ),
    Case(
        "data-range-bernoulli",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{big_npy}"),
        ("bernoulli likelihood needs values in [0, 1]", "rescale the data or use --likelihood gaussian"),
    ),
    Case(
        "data-range-cb",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{big_npy}", "--likelihood", "continuous-bernoulli"),
        ("continuous-bernoulli likelihood needs data in [0, 1]", "--likelihood gaussian"),
    ),
    Case(
        "labels-length",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "{rows_npy}", "--labels", "{short_labels_npy}"),
        ("have shape (119,); expected (120,), one per example",),
    ),
    Case(
        "mnist-offline",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "mnist", "--data-dir", "{new}", "--no-download"),
        ("mnist is not in", "downloading is switched off", "--dataset digits (offline)"),
    ),
    Case(
        "mnist-download-fails",
        ("train", "--out", "{run}", "--overwrite", "--dataset", "mnist", "--data-dir", "{new}"),
        ("mnist is not in", "downloading it failed", "--dataset digits (offline)"),
        # Offline, whatever the machine: every download goes to a proxy on a closed port.
        env=(("http_proxy", "http://127.0.0.1:9"), ("https_proxy", "http://127.0.0.1:9"), ("no_proxy", "")),
    ),
    # --- the run directory ------------------------------------------------------------------------------
    Case("out-is-file", ("train", "--out", "{a_file}", *TINY), ("is an existing file; choose a directory path",)),
    Case(
        "out-unwritable",
        ("train", "--out", "{unwritable_dir}", *TINY),
        ("cannot write to the run directory", "Permission denied", "choose an --out you can write to"),
        unprivileged=True,
    ),
    # --- resuming ---------------------------------------------------------------------------------------
    Case(
        "resume-no-checkpoint",
        ("train", "--resume", "--out", "{empty_dir}"),
        ("no checkpoint at", "train a model there first"),
    ),
    Case(
        "resume-truncated",
        ("train", "--resume", "--out", "{truncated_run}"),
        ("could not read checkpoint", "empty, truncated or not a torch file", "--overwrite"),
    ),
    Case(
        "resume-differs",
        ("train", "--resume", "--out", "{run}", "--hidden", "16", "--lr", "0.1"),
        ("--resume: model.hidden, lr differ(s) from the run in", "only epochs, device"),
    ),
    Case(
        "resume-evil-zip",
        ("train", "--resume", "--out", "{evil_zip_run}"),
        ("could not read checkpoint", "pickled Python object (posix.system) that could run code, so it was refused"),
    ),
    Case(
        "resume-evil-pickle",
        ("train", "--resume", "--out", "{evil_pickle_run}"),
        ("could not read checkpoint", "pickled Python object (exec) that could run code"),
    ),
    # --- evaluate on the same files ---------------------------------------------------------------------
    Case("evaluate-no-checkpoint", ("evaluate", "{empty_dir}"), ("no checkpoint at",)),
    Case(
        "evaluate-truncated",
        ("evaluate", "{truncated_run}"),
        ("could not read checkpoint", "empty, truncated or not a torch file"),
    ),
    Case("evaluate-evil-zip", ("evaluate", "{evil_zip_run}"), ("pickled Python object (posix.system)",)),
    Case("evaluate-evil-pickle", ("evaluate", "{evil_pickle_run}"), ("pickled Python object (exec)",)),
    # --- training that diverges -------------------------------------------------------------------------
    Case(
        "diverge-lr",
        ("train", "--out", "{new}", "--lr", "1e6", "--epochs", "2", *TINY),
        ("training diverged", "at epoch 1, step 2", "no checkpoint was written", "try a smaller --lr"),
    ),
    # beta rises 0 -> 5e37 -> 1e38 (KL warm-up): epoch 1 trains, epoch 2's loss overflows float32.
    Case(
        "diverge-late",
        ("train", "--out", "{new}", "--beta", "1e38", "--kl-warmup", "2", "--epochs", "3", *TINY)
        + ("--checkpoint-seconds", "0"),  # a checkpoint after every epoch: epoch 1's is the one kept
        ("non-finite loss (inf) at epoch 2, step 1", "the checkpoint of epoch 1 is kept in"),
    ),
]
IDS = [c.id for c in CASES]


class RunsShell:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class RunsPython:
    """Unpickling this runs Python code that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory``: its bytes and modification time (ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()}


def drop_permission_override() -> None:
    """In a child of root, before exec: drop CAP_DAC_OVERRIDE, so that file modes apply as to anyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE) failed")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1  # <linux/prctl.h>, <linux/capability.h>


@dataclass
class Workspace:
    root: Path
    paths: dict[str, str]
    base: Path  # a trained 1-epoch run, copied for every {run}
    markers: list[Path]


def build_workspace(root: Path) -> Workspace:
    """Write the data files, a trained base run and the damaged and hostile copies of it."""
    rng = np.random.default_rng(0)
    d = root / "files"
    d.mkdir()
    base = root / "base"
    config = TrainConfig.for_data(load_data("digits"), z_dim=2, hidden=(8,), epochs=1, batch_size=512, threads=1)
    train(config, base, progress=False, figures=False)

    paths: dict[str, str] = {}

    def npy(name: str, arr: np.ndarray, **kwargs) -> None:
        np.save(d / f"{name}.npy", arr, **kwargs)
        paths[f"{name}_npy"] = str(d / f"{name}.npy")

    npy("rows", rng.random((120, 16)).astype(np.float32))
    npy("short_labels", np.arange(119))
    npy("vector", rng.random(10))
    nan = rng.random((120, 16))
    nan[7, 3] = np.nan
    npy("nan", nan)
    npy("big", rng.random((120, 16)) * 255)  # pixel values as bytes, not scaled to [0, 1]
    npy("objects", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "empty.npy").write_bytes(b"")
    paths["empty_npy"] = str(d / "empty.npy")
    (d / "text.npy").write_text("this is not an array\n")
    paths["text_npy"] = str(d / "text.npy")
    paths["missing_npy"] = str(d / "missing.npy")
    (d / "notes.txt").write_text("a file, not a directory\n")
    paths["a_file"] = str(d / "notes.txt")
    (root / "empty_dir").mkdir()
    paths["empty_dir"] = str(root / "empty_dir")
    (root / "unwritable_dir").mkdir(mode=0o555)
    paths["unwritable_dir"] = str(root / "unwritable_dir")

    truncated = root / "truncated_run"
    shutil.copytree(base, truncated)
    data = (base / CHECKPOINT).read_bytes()
    (truncated / CHECKPOINT).write_bytes(data[: len(data) // 2])
    paths["truncated_run"] = str(truncated)

    markers = []
    state = torch.load(base / CHECKPOINT, weights_only=True)
    for name, write, unsafe_load in (
        # A real checkpoint with one extra entry, in torch's zip format.
        (
            "evil_zip_run",
            lambda path, marker: torch.save({**state, "note": RunsShell(str(marker))}, path),
            lambda path: torch.load(path, weights_only=False),
        ),
        # A bare pickle, as pickle.dump writes it.
        (
            "evil_pickle_run",
            lambda path, marker: path.write_bytes(pickle.dumps(RunsPython(str(marker)), protocol=2)),
            lambda path: pickle.loads(path.read_bytes()),
        ),
    ):
        run = root / name
        shutil.copytree(base, run)
        marker = root / f"{name}.pwned"
        write(run / CHECKPOINT, marker)
        # The payload is live: an unsafe load runs it.
        unsafe_load(run / CHECKPOINT)
        assert marker.exists(), f"the {name} payload did not run under an unsafe load"
        marker.unlink()
        markers.append(marker)
        paths[name] = str(run)
    return Workspace(root, paths, base, markers)


@dataclass
class Outcome:
    case: Case
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    guarded: dict[str, tuple[Path, dict[str, tuple[bytes, int]]]]


def run_case(ws: Workspace, case: Case) -> Outcome:
    """Substitute the case's placeholders, snapshot the runs it names, and run the CLI."""
    work = ws.root / "cases" / case.id
    work.mkdir(parents=True)
    subs = dict(ws.paths)
    run = work / "run"
    shutil.copytree(ws.base, run)
    subs["run"] = str(run)
    subs["new"] = str(work / "new")
    argv = [a.format(**subs) for a in case.args]
    guarded = {
        a: (Path(a), snapshot(Path(a)))
        for a in argv
        if Path(a).is_dir() and any(p.name == CHECKPOINT for p in Path(a).iterdir())
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", **dict(case.env)}
    kwargs = {"preexec_fn": drop_permission_override} if case.unprivileged and os.geteuid() == 0 else {}
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )
    return Outcome(case, argv, proc.returncode, proc.stdout, proc.stderr, guarded)


def run_all(ws: Workspace, cases: list[Case] = CASES, workers: int = 4) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip([c.id for c in cases], pool.map(lambda c: run_case(ws, c), cases), strict=True))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = build_workspace(tmp_path_factory.mktemp("bad_input"))
    yield ws
    Path(ws.paths["unwritable_dir"]).chmod(0o755)  # so that pytest can remove its temporary directories


@pytest.fixture(scope="module")
def outcomes(workspace):
    return run_all(workspace)


@pytest.mark.parametrize("case_id", IDS)
def test_bad_input_is_one_line_exit_2_and_loses_nothing(outcomes, workspace, case_id):
    out = outcomes[case_id]
    lines = out.stderr.splitlines()
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), out.stderr
    for text in out.case.expect:
        assert text in lines[0]
    for path, before in out.guarded.values():
        assert snapshot(path) == before, f"{path} changed"
    for marker in workspace.markers:
        assert not marker.exists(), f"{marker} was created: a hostile checkpoint ran code"


def test_diverging_run_keeps_its_last_good_checkpoint(outcomes):
    fresh = Path(outcomes["diverge-lr"].argv[2])
    assert not (fresh / CHECKPOINT).exists()  # diverged in epoch 1: nothing to keep
    assert (fresh / "metrics.jsonl").read_text() == ""

    out = Path(outcomes["diverge-late"].argv[2])
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    # The checkpoint holds the model of epoch 1: its test ELBO, recomputed, is the one recorded then.
    run = load_run(out)
    terms = elbo_terms(run.model, run.guide, run.data.test_x_eval, num_samples=run.config.eval_samples)
    assert terms.elbo == records[0]["test_elbo"]
    assert terms.elbo > -100  # a trained digits model (about -40 nats), not a blown-up one


def api_errors(ws: Workspace, outcomes: dict[str, Outcome]) -> dict[str, Exception]:
    """The same inputs through the Python API; each must raise the CLI's message."""
    digits = load_data("digits")
    p = ws.paths
    errors: dict[str, Exception] = {}

    def catch(case_id: str, call) -> None:
        with pytest.raises(ValueError) as err:
            call()
        errors[case_id] = err.value

    catch("epochs-0", lambda: TrainConfig.for_data(digits, epochs=0))
    catch("lr-nan", lambda: TrainConfig.for_data(digits, lr=float("nan")))
    catch("z-dim-0", lambda: VAEConfig(x_dim=64, z_dim=0))
    catch("prior", lambda: VAEConfig(x_dim=64, prior="nope"))
    catch("elbo", lambda: TrainConfig.for_data(digits, elbo="nope"))
    catch("dataset-name", lambda: load_data("imagenet"))
    catch("data-missing", lambda: load_data(p["missing_npy"]))
    catch("data-empty-file", lambda: load_data(p["empty_npy"]))
    catch("data-vector", lambda: load_data(p["vector_npy"]))
    catch("data-nan", lambda: load_data(p["nan_npy"]))
    catch("labels-length", lambda: load_data(p["rows_npy"], labels=p["short_labels_npy"]))
    big = load_data(p["big_npy"])
    catch("data-range-bernoulli", lambda: train(TrainConfig.for_data(big), ws.root / "api-big", data=big))
    catch("out-is-file", lambda: train(TrainConfig.for_data(digits, hidden=(8,)), p["a_file"]))
    catch("resume-truncated", lambda: load_run(p["truncated_run"]))
    catch("resume-evil-zip", lambda: load_run(p["evil_zip_run"]))
    catch("evaluate-evil-pickle", lambda: load_run(p["evil_pickle_run"]))
    differs = outcomes["resume-differs"].argv[3]
    stored = TrainConfig.from_json(load_checkpoint(Path(differs) / CHECKPOINT)["config"])
    changed = TrainConfig.from_dict(
        {**stored.to_dict(), "lr": 0.1, "model": {**stored.model.to_dict(), "hidden": [16]}}
    )
    catch("resume-differs", lambda: train(changed, differs, resume=True, progress=False))
    return errors


def test_python_api_raises_the_same_messages(outcomes, workspace):
    for case_id, err in api_errors(workspace, outcomes).items():
        assert outcomes[case_id].stderr.strip() == f"pyro-vae: error: {err}", case_id
    for marker in workspace.markers:
        assert not marker.exists()
