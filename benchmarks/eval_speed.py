"""Evaluation speed: ``pyro_vae.log_likelihood`` at K = 5000 against a hand-written batched importance sampler.

Both estimate log p(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (Burda et al. 2015), for the same
MNIST test images (binarised once with the project's fixed seed), with the same model: the MLP 784-400-20 (softplus,
Bernoulli likelihood, N(0, I) prior) trained by ``train()`` for ``--train-epochs`` epochs, its weights copied into
the hand-written network. The hand-written sampler (it lives only here) has the same chunking freedom as the
library: at most ``--max-rows`` (particle, image) rows through the decoder at once (the library's default, 2^15),
and keeps a running logsumexp. Same K, same images, one process, one thread, interleaved repeats (the order
alternates); wall and CPU time, images per second, and the ratio of throughputs (library / hand-written).

Before timing, the two are checked to agree: the mean log p(x) over the images differs by less than 4 standard
errors (the delta-method SEs of both estimates combined; they use different random draws).

    python benchmarks/eval_speed.py --data-dir ../shared/data               # 200 images, 3 repeats
    python benchmarks/eval_speed.py --images 10000 --repeats 1              # the whole test set (~25 min a side)
    python benchmarks/eval_speed.py --quick                                 # 20 images, K = 1000: a smoke run

The last line is ``eval_ratio=<x>``: library throughput over the hand-written sampler's (>= 0.9 is the goal).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyro  # noqa: E402
from end_to_end import CASES, HandWrittenVAE, project_config  # noqa: E402

from pyro_vae import log_likelihood, train  # noqa: E402
from pyro_vae.data import load_data  # noqa: E402
from pyro_vae.importance import MAX_ROWS  # noqa: E402

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def hand_written_log_px(ref: HandWrittenVAE, x: Tensor, k: int, max_rows: int) -> tuple[Tensor, Tensor]:
    """Per-image log p(x) and its delta-method SE, sqrt((K sum w~^2 - 1) / (K - 1)), by batched importance sampling."""
    x = x.reshape(x.shape[0], -1)
    out, out_se = [], []
    block = min(x.shape[0], max_rows)
    chunk = max(1, min(k, max_rows // block))
    for xb in x.split(block):
        h = ref.encoder(xb)
        loc, scale = h[:, : ref.z_dim], F.softplus(h[:, ref.z_dim :]) + 1e-5
        log_scale = scale.log().sum(-1)
        lse = torch.full((xb.shape[0],), -math.inf)
        lse2 = lse.clone()
        done = 0
        while done < k:
            c = min(chunk, k - done)
            eps = torch.randn(c, *loc.shape)
            z = loc + scale * eps
            log_q = -0.5 * (eps**2).sum(-1) - log_scale - 0.5 * ref.z_dim * LOG_2PI
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * ref.z_dim * LOG_2PI
            logits = ref.decoder(z.reshape(-1, ref.z_dim)).reshape(c, xb.shape[0], -1)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_w = log_px_z + log_pz - log_q
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0))
            done += c
        out.append(lse - math.log(k))
        out_se.append(((k * torch.exp(lse2 - 2 * lse) - 1).clamp(min=0) / (k - 1)).sqrt())
    return torch.cat(out), torch.cat(out_se)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - w, time.process_time() - c, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--images", type=int, default=200, help="test images (default 200; 10000 = all)")
    parser.add_argument("--num-samples", type=int, default=5000, help="K (default 5000)")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS, help="rows per decoder call, both sides (2^15)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of train() before evaluating")
    parser.add_argument("--quick", action="store_true", help="20 images, K = 1000, 1 repeat: a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.num_samples, args.repeats = 20, 1000, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        raise SystemExit(f"no MNIST under {args.data_dir} (--data-dir, torchvision's layout)")
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, CPU, 1 thread, load average {load[0]:.2f} {load[1]:.2f}"
    )
    case = CASES["mnist-mlp"]
    data = load_data("mnist", data_dir=args.data_dir, download=False)
    config = project_config(case, data, args.train_epochs, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Path(tmp) / "run", data=data, progress=False, figures=False)
    model, guide = result.model, result.guide
    ref = HandWrittenVAE(case.arch, tuple(result.data.x_shape), case.hidden, case.z_dim)
    ref.copy_from(model, guide)
    x = result.data.test_x_eval[: args.images]
    k, rows = args.num_samples, args.max_rows
    print(f"MLP 784-{case.hidden}-{case.z_dim} after {args.train_epochs} epoch(s); {x.shape[0]} test images, K = {k}")

    def library():
        return log_likelihood(model, guide, x, num_samples=k, max_rows=rows, return_stderr=True)

    def hand():
        return hand_written_log_px(ref, x, k, rows)

    torch.manual_seed(args.seed)
    times: dict[str, list[tuple[float, float]]] = {"log_likelihood": [], "hand-written": []}
    estimates = {}
    for r in range(args.repeats):
        for side in ("hand-written", "log_likelihood") if r % 2 == 0 else ("log_likelihood", "hand-written"):
            wall, cpu, estimates[side] = timed(hand if side == "hand-written" else library)
            times[side].append((wall, cpu))
            print(f"  repeat {r + 1} {side}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    (lib, lib_se), (hw, hw_se) = estimates["log_likelihood"], estimates["hand-written"]
    n = x.shape[0]
    diff = (lib.mean() - hw.mean()).item()
    se = math.sqrt((lib_se.pow(2).sum() + hw_se.pow(2).sum()).item()) / n
    print(
        f"mean log p(x): log_likelihood {lib.mean().item():.3f}, hand-written {hw.mean().item():.3f} nats; "
        f"difference {diff:+.3f} ({diff / se:+.1f} SE)"
    )
    if abs(diff) > 4 * se:
        raise SystemExit("the two estimates disagree by more than 4 standard errors")
    med = {s: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for s, t in times.items()}
    print("\n| sampler | wall s | CPU s | images / s (wall) |")
    print("|---|---:|---:|---:|")
    for side in ("hand-written", "log_likelihood"):
        print(f"| {side} | {med[side][0]:.2f} | {med[side][1]:.2f} | {n / med[side][0]:.1f} |")
    ratio = med["hand-written"][0] / med["log_likelihood"][0]
    cpu_ratio = med["hand-written"][1] / med["log_likelihood"][1]
    load = os.getloadavg()
    print(
        f"throughput log_likelihood / hand-written: {ratio:.3f} wall, {cpu_ratio:.3f} CPU; load average {load[0]:.2f}"
    )
    print(f"eval_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
