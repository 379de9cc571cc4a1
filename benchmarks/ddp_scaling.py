"""Data-parallel scaling: training examples per second with 1 and N ranks under torchrun, same global batch.

    python benchmarks/ddp_scaling.py --dataset mnist --data-dir ../shared/data --ranks 1 2 --repeats 3

Each measurement is a fresh ``torchrun --standalone --nproc-per-node N`` launch of this file (``--worker``): the
ranks build the ``pyro_vae.Trainer`` (setup: data, model, DDP), take ``--warmup`` steps, then time ``--steps``
steps of the global batch (``--batch-size``, split across the ranks) between two barriers; rank 0 reports. The
reference measured in the same run is one plain process (no torchrun): the ordinary ``pyro-vae train`` step, with
its compiled meanfield objective (the distributed step runs Pyro's uncompiled ``TraceMeanField_ELBO``: see
docs/distributed.md). Launches are interleaved (plain, 1 rank, 2 ranks, plain, ...) and the medians printed, with
the efficiency throughput(N) / (N x throughput(1 rank)). One thread per rank (torchrun's OMP_NUM_THREADS=1;
``--threads 1`` for the plain process). On a GPU machine pass ``--device cuda``: one GPU per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    from pyro_vae import TrainConfig, VAEConfig
    from pyro_vae.distributed import DataParallel, join_strategy
    from pyro_vae.run_dir import RunDir
    from pyro_vae.training import Trainer

    model = VAEConfig(z_dim=args.z_dim, hidden=tuple(args.hidden))
    cfg = TrainConfig(
        model=model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=False,
        batch_size=args.batch_size,
        epochs=1,
        threads=1,
        device=args.device,
    )
    with tempfile.TemporaryDirectory() as out, RunDir.lock(out, "benchmarks/ddp_scaling.py") as run:
        strategy = join_strategy(cfg.resolve_device())
        trainer = Trainer(cfg, run, progress=False, strategy=strategy)
        trainer.setup()
        step = trainer.train_step
        strategy.begin_epoch(0, 0)
        x = trainer.data.train_epoch()
        n = args.batch_size
        batches = [x[(i * n) % (x.shape[0] - n) :][:n] for i in range(args.warmup + args.steps)]
        for b in batches[: args.warmup]:
            step(b, beta=1.0)
        ranks = strategy.ranks if isinstance(strategy, DataParallel) else None
        sync = ranks.barrier if ranks else (lambda: None)
        cuda = trainer.device.type == "cuda"
        sync()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in batches[args.warmup :]:
            step(b, beta=1.0)
        if cuda:
            torch.cuda.synchronize()
        sync()
        seconds = time.perf_counter() - start
        if strategy.writes:
            Path(args.result).write_text(json.dumps({"examples_per_s": args.steps * n / seconds}))
        if ranks:
            ranks.close()


def measure(args: argparse.Namespace, ranks: int | None) -> float:
    """Examples per second of one launch: ``ranks`` under torchrun, or None for one plain process."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        own = [sys.executable, __file__, "--worker", "--result", str(result), *worker_args(args)]
        if ranks is None:
            cmd, env = own, dict(os.environ, OMP_NUM_THREADS="1")
            env.pop("WORLD_SIZE", None)
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
            cmd, env = cmd + own[1:], dict(os.environ)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"ddp_scaling: a launch failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())["examples_per_s"]


def worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--dataset", args.dataset, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    out += ["--warmup", str(args.warmup), "--z-dim", str(args.z_dim), "--device", args.device]
    out += ["--hidden", *map(str, args.hidden)]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain single-process reference")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    setups: list[int | None] = ([] if args.no_plain else [None]) + list(args.ranks)
    runs: dict[int | None, list[float]] = {s: [] for s in setups}
    for _ in range(args.repeats):
        for s in setups:  # interleaved, so a change in the machine's load hits every setup alike
            runs[s].append(measure(args, s))
    load = os.getloadavg()[0]
    print(
        f"{args.dataset}, MLP {args.hidden}, z_dim {args.z_dim}, global batch {args.batch_size}, {args.steps} timed "
        f"steps, {args.device}, median of {args.repeats}; load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    base = statistics.median(runs[args.ranks[0]]) if args.ranks[0] == 1 else None
    plain = statistics.median(runs[None]) if None in runs else None
    for s in setups:
        med = statistics.median(runs[s])
        name = "1 process (plain step)" if s is None else f"{s} rank{'s' if s > 1 else ''} (torchrun, DDP)"
        line = f"  {name:28s} {med:9.0f} examples/s"
        if s is not None and base:
            line += f"   efficiency {med / (s * base):.2f}"
        if s is not None and plain:
            line += f"   vs plain process {med / plain:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
