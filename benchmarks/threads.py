"""How many torch CPU threads should a command use? Time the same work with 1, 2, ... threads and torch's default.

Each measurement is a fresh process (``python benchmarks/threads.py --one ...``), so every setting starts with its own
thread pool; the settings are interleaved (1 2 default 1 2 default ...) and each is reported as the median over
``--repeats``. Three workloads, each timed inside the process from the first step to the last (imports, data loading
and figures left out):

- ``digits``: ``pyro-vae train`` on digits, 20 epochs, z_dim 2, hidden 256 (the default model), batch 128;
- ``mnist``: one epoch of MNIST, z_dim 10, hidden 512 256, batch 128 (needs MNIST on disk: ``--data-dir``);
- ``evaluate``: ``pyro-vae evaluate``'s importance-sampled log p(x) of 500 MNIST test images with K = 500 under
  that model (untrained: the cost does not depend on the weights).

``--busy N`` runs N CPU-bound processes (a Python busy loop each) alongside, as on a machine shared with other jobs.
There is no hand-written reference: the thread count is the only thing that changes.

    python benchmarks/threads.py --workloads digits --repeats 5
    python benchmarks/threads.py --workloads digits mnist evaluate --data-dir ../shared/data --busy 1

Prints one line per (workload, threads) with the median and all times, and ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(workload: str, threads: int | None, data_dir: str | None) -> float:
    """Seconds for one ``workload`` with ``threads`` torch threads (None: torch's default), in this process."""
    sys.path.insert(0, str(ROOT))
    import pyro
    import torch

    from pyro_vae import TrainConfig, Trainer
    from pyro_vae.evaluation import importance_sample_stats
    from pyro_vae.run_dir import RunDir

    if threads is not None:
        torch.set_num_threads(threads)
    if workload == "digits":
        options = dict(dataset="digits", epochs=20, batch_size=128)
        model = dict(z_dim=2)
    else:
        options = dict(dataset="mnist", data_dir=data_dir, download=False, epochs=1, batch_size=128)
        model = dict(z_dim=10, hidden=(512, 256))
    config = TrainConfig.from_options(model, {**options, "threads": threads, "device": "cpu"})
    with tempfile.TemporaryDirectory() as out, RunDir.lock(out, "benchmarks/threads.py") as run:
        trainer = Trainer(config, run, progress=False)
        if workload == "evaluate":
            trainer.setup()
            x = trainer.data.test_x_eval[:500]
            pyro.set_rng_seed(0)
            start = time.perf_counter()
            importance_sample_stats(trainer.model, trainer.guide, x, num_samples=500)
            return time.perf_counter() - start
        trainer.setup = _timed(trainer.setup)  # the clock starts when setup is done
        trainer.fit()
        return time.perf_counter() - trainer.setup.done


def _timed(setup):
    def run():
        setup()
        run.done = time.perf_counter()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits"], choices=["digits", "mnist", "evaluate"])
    parser.add_argument("--threads", nargs="+", default=["1", "2", "default"], help="thread counts, or 'default'")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running alongside")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        workload, threads = args.one
        print(one(workload, None if threads == "default" else int(threads), args.data_dir))
        return
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(args.busy)  # noqa: S603
    ]
    try:
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; busy processes: {args.busy}")
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for workload in args.workloads:
                for threads in args.threads:
                    cmd = [sys.executable, __file__, "--one", workload, threads]
                    if args.data_dir:
                        cmd += ["--data-dir", args.data_dir]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
                    times.setdefault((workload, threads), []).append(float(out.strip().splitlines()[-1]))
        for (workload, threads), ts in times.items():
            print(
                f"{workload:9} threads={threads:8} median {statistics.median(ts):7.2f} s   "
                f"({', '.join(f'{t:.2f}' for t in ts)})"
            )
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        for p in burners:
            p.kill()


if __name__ == "__main__":
    main()
