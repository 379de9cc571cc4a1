"""Epoch time and peak memory of the library's training loop against the number of rows N.

Runs the trainer's inner loop (``pyro_vae.data``: the grey pixels held in memory as one float32 tensor,
a fresh Bernoulli binarisation per epoch, shuffled minibatches indexed on the device; the fast
``TrainStep`` with the "meanfield" ELBO and a fused Adam) for N = 10k, 60k and 240k rows of 784 random
grey pixels, each N in its own process so that each peak is its own. Expected: time per row constant
(epoch time linear in N), and memory = the data (grey pixels + the epoch's binarised copy, 2 x N x 784 x
4 bytes) + a constant that does not grow with N or with the number of epochs.

    python benchmarks/epoch_scaling.py                     # ~2 minutes on 2 cores
    python benchmarks/epoch_scaling.py --sizes 10000 60000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
X_DIM, HIDDEN, Z_DIM = 784, 400, 20


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(n: int, epochs: int, batch_size: int, device: str, threads: int | None, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from pyro.infer import TraceMeanField_ELBO

    from pyro_vae import VAEConfig, build
    from pyro_vae.data import VAEData, minibatches
    from pyro_vae.step import TrainStep, parameters_of

    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    model, guide = build(VAEConfig(x_dim=X_DIM, z_dim=Z_DIM, hidden=(HIDDEN,)))
    model.to(dev)
    guide.to(dev)
    params = parameters_of(model, guide)
    elbo = TraceMeanField_ELBO(vectorize_particles=True, max_plate_nesting=1)
    step = TrainStep.fast_step(model, guide, elbo, params, lr=1e-3)
    # Warm up (first validated step, compilation for the full and the last batch shape) on other data.
    warm = torch.bernoulli(torch.rand(batch_size + n % batch_size, X_DIM, device=dev))
    for batch in minibatches(warm, batch_size):
        step(batch)
    base = rss_mb()

    data = VAEData(
        name=f"random-{n}",
        train_x=torch.rand(n, X_DIM, device=dev),
        test_x=torch.rand(100, X_DIM, device=dev),
        train_y=None,
        test_y=None,
        image_shape=(28, 28),
    )
    data.prepare(model.likelihood)
    with_data = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        data_gpu = torch.cuda.memory_allocated() / 2**20
    times, peaks, gpu_peaks = [], [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        x_epoch = data.train_epoch()
        for batch in minibatches(x_epoch, batch_size):
            step(batch)
        del x_epoch
        if cuda:
            torch.cuda.synchronize()
            gpu_peaks.append(torch.cuda.max_memory_allocated() / 2**20 - data_gpu)
        times.append(time.perf_counter() - t0)
        peaks.append(peak_rss_mb())
    return {
        "n": n,
        "data_mb": n * X_DIM * 4 / 2**20,
        "epoch_s": times,
        "base_rss_mb": base,
        "data_rss_mb": with_data,
        "peak_rss_mb": peaks,
        "gpu_peak_above_data_mb": gpu_peaks,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 240_000])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.epochs, args.batch_size, args.device, args.threads, args.seed)))
        return

    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n), "--epochs", str(args.epochs)]
        cmd += ["--batch-size", str(args.batch_size), "--device", args.device, "--seed", str(args.seed)]
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"N={n}: epochs {', '.join(f'{t:.1f}' for t in r['epoch_s'])} s", flush=True)

    print()
    print(
        f"batch {args.batch_size}, {args.epochs} epochs per N, device {args.device}; "
        "memory: resident set of the process (MiB)"
    )
    print(
        "| N | data MiB | epoch s (median) | us per row | RSS before data | RSS with data | peak RSS "
        "| peak - RSS with data | same, less the epoch's binarised copy | peak after epoch 1 -> last |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        epoch = statistics.median(r["epoch_s"])
        peak = r["peak_rss_mb"][-1]
        print(
            f"| {r['n']} | {r['data_mb']:.0f} | {epoch:.2f} | {1e6 * epoch / r['n']:.1f} | {r['base_rss_mb']:.0f} "
            f"| {r['data_rss_mb']:.0f} | {peak:.0f} | {peak - r['data_rss_mb']:.0f} "
            f"| {peak - r['data_rss_mb'] - r['data_mb']:.0f} "
            f"| {r['peak_rss_mb'][0]:.0f} -> {peak:.0f} |"
        )
    if args.device.startswith("cuda"):
        for r in rows:
            print(f"N={r['n']}: GPU peak above the data, per epoch (MiB): {r['gpu_peak_above_data_mb']}")
    per_row = [statistics.median(r["epoch_s"]) / r["n"] for r in rows]
    print()
    print(f"time_per_row_max_over_min={max(per_row) / min(per_row):.2f}")


if __name__ == "__main__":
    main()
