"""Data-parallel training under torchrun (gloo, 2 CPU ranks): the same run as one process, faults, resume.

The truths compared against: a single-process run with the same seed and global batch (its parameters, its
metrics, its random generator's state), one draw of the whole batch's noise, and the whole test set evaluated at
once. The torchrun tests start real launches of ``python -m torch.distributed.run`` on the 8x8 digits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import VAEConfig, build
from pyro_vae.distributed import Ranks, check_batches, global_draws, sharded_elbo_sums
from pyro_vae.elbo_terms import elbo_sums, elbo_terms
from pyro_vae.errors import UserError

#: Parameters of a 2-rank run may differ from one process's by float32 rounding: the gradients of two halves are
#: summed by the all-reduce in another order than the whole batch's (measured: 5e-7 after 2 epochs).
REL = 1e-5
#: The conv networks sum more terms per weight (every position of every image) in an order that differs between one
#: process and two ranks, and the convolution kernel's own order varies by CPU: 1.7e-5 measured on this machine
#: after 2 epochs (the previous CI machine passed at 1e-5), so 1e-4: one Adam step (lr 1e-3) moves a weight of
#: this layer (scale 0.1) by about 1e-2 of its scale, so a missed or doubled step still fails.
REL_CONV = 1e-4
COMMON = ["--dataset", "digits", "--no-progress", "--z-dim", "2", "--hidden", "64"]


def ranks(rank: int, world: int) -> Ranks:
    return Ranks(rank, world, rank, torch.device("cpu"))


# ---------------------------------------------------------------- in one process: the parts


@pytest.mark.parametrize("n,world", [(128, 2), (92, 2), (7, 3), (5, 5)], ids=str)
def test_shards_are_torch_tensor_split(n, world):
    rows = torch.arange(n)
    expected = torch.tensor_split(rows, world)
    assert [rows[ranks(r, world).shard(n)].tolist() for r in range(world)] == [e.tolist() for e in expected]


@pytest.mark.parametrize("guide", ["normal", "fullcov", "iaf"])
@pytest.mark.parametrize("particles", [None, 3], ids=["one-draw", "3-particles"])
def test_each_rank_draws_its_slice_of_the_whole_batch_noise(guide, particles):
    """Two ranks, each drawing its half under ``global_draws`` from a copy of the same generator state, get together
    the very z one process gets for the whole batch (a rank drawing only its own half would not: torch fills a
    tensor in blocks, so a small draw is not a prefix of a large one)."""
    _, g = build(VAEConfig(x_dim=64, z_dim=3, guide=guide))
    x = torch.rand(37, 64)
    shape = () if particles is None else (particles,)
    start = torch.get_rng_state()
    whole = g.posterior(x).rsample(shape)
    halves = []
    for r in range(2):
        gen = torch.Generator()
        gen.set_state(start)
        part = ranks(r, 2).shard(37)
        with global_draws(part, 37, gen):
            halves.append(g.posterior(x[part]).rsample(shape))
    torch.testing.assert_close(torch.cat(halves, dim=-2), whole, rtol=1e-6, atol=1e-6)
    torch.set_rng_state(start)
    naive = g.posterior(x[:19]).rsample(shape)
    assert not torch.allclose(naive, whole[..., :19, :])


def test_evaluation_blocks_shared_out_sum_to_the_whole_evaluation():
    """The blocks of the test set evaluated apart (as ranks do) add up to one evaluation of the whole set."""
    model, guide = build(VAEConfig(x_dim=64, z_dim=2))
    x = torch.bernoulli(torch.rand(300, 64))
    whole = elbo_terms(model, guide, x, num_samples=2, batch_size=64)
    parts = [elbo_sums(model, guide, x, 2, batch_size=64, blocks=range(r, 5, 3)) for r in range(3)]
    total = (parts[0] + parts[1] + parts[2]).terms()
    assert total.elbo == pytest.approx(whole.elbo, rel=1e-12)
    assert total.kl == pytest.approx(whole.kl, rel=1e-12)


def test_one_rank_group_evaluates_as_one_process(tmp_path, monkeypatch):
    """A real gloo group of one rank (file rendezvous) through the sharded evaluation's all-reduce."""
    import torch.distributed as dist

    model, guide = build(VAEConfig(x_dim=64, z_dim=2))
    x = torch.bernoulli(torch.rand(300, 64))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        got = sharded_elbo_sums(model, guide, x, 1, ranks(0, 1), block=64).terms()
    finally:
        dist.destroy_process_group()
    assert got.elbo == pytest.approx(elbo_terms(model, guide, x, batch_size=64).elbo, rel=1e-12)


def test_a_batch_smaller_than_the_ranks_is_one_line():
    with pytest.raises(UserError, match=r"smallest batch has 1 examples .* fewer than the 2 ranks"):
        check_batches(ranks(0, 2), 1501, 100)
    check_batches(ranks(0, 2), 1500, 128)  # last batch 92


def _two_rank_gradients(rank: int, rendezvous: str, out: str) -> None:
    """One of two gloo ranks (spawned): a ``DistributedStep`` of plain SGD with a zero learning rate on its half of
    the batch; rank 0 saves the gradients it stepped with and the loss the step returned."""
    import torch.distributed as dist

    from pyro_vae.distributed import DistributedStep

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        model, guide, batch = _gradient_setup()
        params = [*model.parameters(), *guide.parameters()]
        step = DistributedStep(model, guide, _elbo(), torch.optim.SGD(params, lr=0.0), params, None, ranks(rank, 2))
        step.begin_epoch(0, 0)
        torch.manual_seed(11)
        loss = step(batch)
        if rank == 0:
            torch.save({"loss": loss, "grads": [p.grad.clone() for p in params]}, out)
        del step  # it holds DDP, which holds the group
        _leave_cleanly()
    finally:
        dist.destroy_process_group()


def _leave_cleanly() -> None:
    """What ``DataParallel.session`` does at a clean end, once the caller has dropped its step: DDP (which holds the
    group) is collected and every rank meets before the group is left. Without it a rank once died of SIGABRT at
    exit after a passing step ("terminate called without an active exception": gloo torn down under a live DDP)."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.barrier()


def assert_same_step(got: dict, loss: torch.Tensor, params: list) -> None:
    """A rank's saved loss and gradients equal one process's ``loss`` and its parameters' gradients (rel 1e-5)."""
    assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    for mine, theirs in zip(params, got["grads"], strict=True):
        scale = float(mine.grad.abs().max().clamp_min(1e-12))
        assert float((mine.grad - theirs).abs().max()) / scale < REL


def _gradient_setup():
    torch.manual_seed(0)
    model, guide = build(VAEConfig(x_dim=64, z_dim=2, hidden=(16,)))
    return model, guide, torch.bernoulli(torch.rand(40, 64, generator=torch.Generator().manual_seed(1)))


def _elbo():
    from pyro.infer import Trace_ELBO

    return Trace_ELBO()


@pytest.mark.slow
def test_two_ranks_backpropagate_the_gradient_of_the_whole_batch(tmp_path):
    """The gradient each rank steps with (after DDP's average over ranks) is the gradient of the whole batch's loss
    in one process, on the same noise (float32 rounding: 1e-5); compared before any optimiser, so a wrong scale
    (Adam is nearly blind to one) shows at full size: half or twice the gradient is off by 0.5 or 1."""
    import torch.multiprocessing as mp

    from pyro_vae.distributed import BetaInput

    out = tmp_path / "grads.pt"
    mp.start_processes(
        _two_rank_gradients, args=(f"file://{tmp_path / 'rdzv'}", str(out)), nprocs=2, start_method="spawn"
    )
    got = torch.load(out, weights_only=True)
    model, guide, batch = _gradient_setup()
    torch.manual_seed(11)
    loss = _elbo()(BetaInput(model), BetaInput(guide))(batch, torch.tensor(1.0))
    loss.backward()
    assert_same_step(got, loss, [*model.parameters(), *guide.parameters()])


def _no_noise(shape, dtype, device):
    """Zero noise for every reparameterised Normal draw: M2's two plates hold fewer rows than a rank's slice, so its
    draws come from per-rank streams (equal in distribution only); with no noise its step is deterministic and must
    equal one process's to rounding."""
    return torch.zeros(shape, dtype=dtype, device=device)


def _m2_setup():
    """M2 on 8-pixel rows with a 40-row packed batch whose halves (one per rank) each hold 10 labelled and 10
    unlabelled rows, labelled scale 0.5 and alpha = 0.1 x 1000."""
    from pyro_vae.models.labelled import pack

    torch.manual_seed(0)
    model, guide = build(VAEConfig(x_dim=8, z_dim=3, hidden=(16,), model="m2", options={"model": {"classes": 3}}))
    model.use_training_set(1000)
    model.labelled_scale = guide.labelled_scale = 0.5
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.rand(40, 8, generator=g))
    y = torch.randint(0, 3, (40,), generator=g)
    y[torch.arange(40) % 2 == 1] = -1  # every other row unlabelled
    return model, guide, pack(x, y)


def _two_rank_m2_gradients(rank: int, rendezvous: str, out: str) -> None:
    """As ``_two_rank_gradients``, for M2 and its TraceEnum_ELBO."""
    import torch.distributed as dist
    from torch.distributions import normal

    from pyro_vae.distributed import DistributedStep

    torch.set_num_threads(1)
    normal._standard_normal = _no_noise  # this spawned process only
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        model, guide, batch = _m2_setup()
        params = [*model.parameters(), *guide.parameters()]
        elbo = model.training_elbo()
        step = DistributedStep(model, guide, elbo, torch.optim.SGD(params, lr=0.0), params, None, ranks(rank, 2))
        step.begin_epoch(0, 0)
        loss = step(batch)
        if rank == 0:
            torch.save({"loss": loss, "grads": [p.grad.clone() for p in params]}, out)
        del step  # it holds DDP, which holds the group
        _leave_cleanly()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_m2_the_gradient_of_the_whole_batch(tmp_path, monkeypatch):
    """M2 (labelled and unlabelled plates, y enumerated, the labelled rows scaled, the classifier factor): the
    gradient a rank steps with is the whole batch's in one process (1e-5), so its rows' scales survive the split."""
    import torch.multiprocessing as mp
    from torch.distributions import normal

    from pyro_vae.distributed import BetaInput

    out = tmp_path / "grads.pt"
    mp.start_processes(
        _two_rank_m2_gradients, args=(f"file://{tmp_path / 'rdzv'}", str(out)), nprocs=2, start_method="spawn"
    )
    got = torch.load(out, weights_only=True)
    monkeypatch.setattr(normal, "_standard_normal", _no_noise)
    model, guide, batch = _m2_setup()
    loss = model.training_elbo().differentiable_loss(BetaInput(model), BetaInput(guide), batch, torch.tensor(1.0))
    loss.backward()
    assert_same_step(got, loss, [*model.parameters(), *guide.parameters()])


# ---------------------------------------------------------------- real launches


def run_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "pyro_vae", "train", *COMMON, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env())


def single(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pyro_vae", "train", *COMMON, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path, rel: float = REL) -> None:
    """Same parameters (rel ``REL``), same random generator state, same metrics to rounding."""
    ca, cb = checkpoint(a), checkpoint(b)
    for part in ("model", "guide"):
        for name, value in ca[part].items():
            other = cb[part][name]
            scale = value.abs().max().clamp_min(1e-12)
            assert float((value - other).abs().max() / scale) < rel, f"{part}.{name}"
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])  # the draws of both runs were the same
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb)
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["epoch"] == rb["epoch"] and ra["kl"] == rb["kl"]
        for key in ("train_loss", "test_elbo", "test_recon", "test_kl"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5), key


REFERENCE = ["--epochs", "2", "--batch-size", "128", "--seed", "3"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """Single-process runs of ``REFERENCE`` by estimator, made once for the tests that compare against them."""
    made: dict[str, Path] = {}

    def get(elbo: str) -> Path:
        if elbo not in made:
            made[elbo] = tmp_path_factory.mktemp(f"one-{elbo}")
            ok(single("--out", str(made[elbo]), "--overwrite", *REFERENCE, "--elbo", elbo))
        return made[elbo]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("elbo", ["meanfield", "iwae"])
def test_two_ranks_train_the_single_process_run(tmp_path, one_process, elbo):
    proc = ok(torchrun(2, "--out", str(tmp_path / "two"), *REFERENCE, "--elbo", elbo))
    assert proc.stdout.count("test ELBO") == 1  # rank 0 alone reports
    assert_same_run(one_process(elbo), tmp_path / "two")
    assert not list((tmp_path / "two").glob("*.tmp")) and not (tmp_path / "two" / ".lock").exists()


@pytest.mark.slow
def test_two_ranks_train_the_single_process_run_with_the_conv_networks(tmp_path):
    """The same equality for image data through the conv encoder and decoder (blobs the test writes)."""
    yy, xx = np.mgrid[:8, :8]
    centres = np.random.default_rng(0).integers(1, 7, (256, 2))
    images = 255 * np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4.0)
    np.save(tmp_path / "blobs.npy", images.astype(np.uint8))
    conv = ["--dataset", str(tmp_path / "blobs.npy"), "--encoder", "conv", "--decoder", "conv", "--hidden", "16"]
    conv += ["--encoder-channels", "4", "8", "--epochs", "2", "--batch-size", "32"]
    ok(single("--out", str(tmp_path / "one"), *conv))
    ok(torchrun(2, "--out", str(tmp_path / "two"), *conv))
    assert_same_run(tmp_path / "one", tmp_path / "two", rel=REL_CONV)


@pytest.mark.slow
def test_two_ranks_train_the_single_process_run_of_a_conditional_vae(tmp_path):
    """The conditional VAE reads each row's label in its one data plate, so its draws are sliced from the whole
    batch's as the plain VAE's: 2 ranks take the steps of one process, class_samples.png included."""
    conditional = [*REFERENCE, "--model", "conditional"]
    ok(single("--out", str(tmp_path / "one"), *conditional))
    ok(torchrun(2, "--out", str(tmp_path / "two"), *conditional))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "class_samples.png").is_file()


@pytest.mark.slow
def test_two_ranks_resume_a_one_process_run_exactly(tmp_path, one_process):
    """The global batch and the draws do not depend on the number of ranks, so a 1-process checkpoint resumed by 2
    ranks ends where 2 epochs in one process end."""
    ok(single("--out", str(tmp_path / "mixed"), *REFERENCE, "--epochs", "1"))
    proc = ok(torchrun(2, "--out", str(tmp_path / "mixed"), "--resume", "--epochs", "2"))
    assert "epoch 2" in proc.stdout
    assert_same_run(one_process("meanfield"), tmp_path / "mixed")


def pyro_vae_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("pyro-vae:", "rank "))]


def assert_only_torchruns_traceback(stderr: str) -> None:
    """No traceback from a rank (it would name a file of pyro_vae); torchrun prints one of its own on a failed
    worker (``ChildFailedError``, with its table of exit codes)."""
    assert "pyro_vae/" not in stderr, stderr[-3000:]
    assert stderr.count("Traceback") <= 1


def rank_pids(launcher: subprocess.Popen, nproc: int, deadline: float) -> dict[int, int]:
    """rank -> PID of the workers torchrun started (read from their environments)."""
    found: dict[int, int] = {}
    while len(found) < nproc and time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher.pid:  # its parent is torchrun
                env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
                if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
                    found[int(env[b"RANK"])] = int(proc.name)
        time.sleep(0.1)
    return found


def wait_for(path: Path, deadline: float) -> None:
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def launch(out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pyro_vae", "train", *COMMON, "--out", str(out), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env())


@pytest.mark.slow
def test_a_killed_rank_stops_the_others_and_the_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    launcher = launch(out, "--epochs", "40", "--batch-size", "16")
    deadline = time.monotonic() + 120
    pids = rank_pids(launcher, 2, deadline)
    assert sorted(pids) == [0, 1]
    wait_for(out / "checkpoint.pt", deadline)
    time.sleep(0.3)  # into the next epoch
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=90)
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    ours = pyro_vae_lines(stderr)
    assert len(ours) == 1 and "rank 0 of 2: lost contact with the other ranks" in ours[0], stderr[-3000:]
    assert "is kept in" in ours[0]
    assert_only_torchruns_traceback(stderr)
    state = checkpoint(out)  # whole, and loadable
    done = int(state["epoch"])
    assert done >= 1 and len(metrics(out)) == done
    proc = ok(single("--out", str(out), "--resume", "--epochs", str(done + 1), "--batch-size", "16"))
    assert f"epoch {done + 1}" in proc.stdout


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_one_mid_epoch_checkpoint_and_resume_is_exact(tmp_path):
    """SIGTERM (or Ctrl-C) to the launcher reaches the ranks, which agree on the step, let rank 0 save it, and exit
    with one line each; the 2-rank resume ends where an uninterrupted single-process run ends."""
    # A checkpoint after each epoch, and enough epochs that the signal lands mid-run on a fast machine too.
    args = ["--epochs", "8", "--batch-size", "16", "--checkpoint-seconds", "0"]
    out = tmp_path / "run"
    launcher = launch(out, *args)
    deadline = time.monotonic() + 120
    wait_for(out / "checkpoint.pt", deadline)
    time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    ours = pyro_vae_lines(stderr)
    assert len(ours) == 2 and all("interrupted" in line and "--resume" in line for line in ours), stderr[-3000:]
    assert_only_torchruns_traceback(stderr)
    state = checkpoint(out)
    assert "partial" in state or int(state["epoch"]) < 8
    ok(torchrun(2, "--out", str(out), "--resume", *args))
    ok(single("--out", str(tmp_path / "one"), *args))
    assert_same_run(tmp_path / "one", out)


@pytest.mark.slow
def test_a_non_finite_loss_stops_every_rank_with_one_line(tmp_path):
    proc = torchrun(2, "--out", str(tmp_path / "run"), "--epochs", "2", "--lr", "1e7")
    assert proc.returncode != 0
    ours = pyro_vae_lines(proc.stderr)
    assert len(ours) == 2, proc.stderr[-3000:]
    assert len(set(ours)) == 1 and ("non-finite" in ours[0] or "diverged" in ours[0])


def test_a_bad_collective_timeout_is_one_line(monkeypatch):
    from pyro_vae.distributed import join

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=re.escape("--collective-timeout must be a finite number > 0 (seconds), got 0")):
        join(torch.device("cpu"), timeout_s=0)
    monkeypatch.delenv("WORLD_SIZE")
    assert join(torch.device("cpu")) is None  # not launched by torchrun: one process, no group
