"""What the checkpoint's integrity costs: ``save_checkpoint`` / ``load_checkpoint`` against hand-written PyTorch.

The reference is the plain atomic save a PyTorch script would write (``torch.save`` into a temporary file, fsync,
``os.replace``) and a plain ``torch.load(weights_only=True)``. The library adds the SHA-256 content digest
(computed on save, checked on load), serialization into memory first, and the hard link that keeps the previous
checkpoint. Both sides save the same state (model, guide, Adam state after a step, RNG states, 100 epochs of
metrics) into the same directory, interleaved, one thread; medians over ``--repeats``. Also the data digest
(computed once per run start, and by ``load_run``) for an MNIST-sized training set.

    python benchmarks/checkpoint_io.py                  # ~1 minute
    python benchmarks/checkpoint_io.py --repeats 50 --dir /some/disk
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pyro_vae import VAEConfig, build  # noqa: E402
from pyro_vae.data import VAEData  # noqa: E402
from pyro_vae.run_dir import FORMAT_VERSION, data_digest, load_checkpoint, rng_state, save_checkpoint  # noqa: E402
from pyro_vae.step import make_optimizer, parameters_of  # noqa: E402

#: (name, x_dim, hidden, z_dim): the kl-ablation's model on digits, and an MNIST MLP.
MODELS = [("digits kl-ablation (64-128-2)", 64, (128,), 2), ("MNIST MLP (784-512-256-20)", 784, (512, 256), 20)]


def state_of(x_dim: int, hidden: tuple[int, ...], z_dim: int) -> dict:
    model, guide = build(VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden=hidden))
    params = parameters_of(model, guide)
    optimizer = make_optimizer(params, 1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    record = {"epoch": 1, "beta": 1.0, "train_loss": 1.0, "test_elbo": -1.0, "test_recon": 1.0, "test_kl": 0.1}
    return {
        "format": FORMAT_VERSION,
        "epoch": 100,
        "config": "{}",
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "metrics": json.dumps([record] * 100),
        "data_digest": "0" * 64,
    }


def reference_save(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="directory to write in (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.repeats} repeats, medians, 1 thread")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = Path(tmp)
        for name, x_dim, hidden, z_dim in MODELS:
            state = state_of(x_dim, hidden, z_dim)
            ours, ref = out / "ours.pt", out / "reference.pt"
            times = {"save ours": [], "save reference": [], "load ours": [], "load reference": []}
            for _ in range(args.repeats):
                times["save reference"].append(timed(lambda: reference_save(state, ref)))  # noqa: B023
                times["save ours"].append(timed(lambda: save_checkpoint(state, ours)))  # noqa: B023
                times["load reference"].append(timed(lambda: torch.load(ref, weights_only=True)))  # noqa: B023
                times["load ours"].append(timed(lambda: load_checkpoint(ours)))  # noqa: B023
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            size = ours.stat().st_size / 2**20
            print(
                f"{name}: {size:.2f} MiB; save {med['save ours']:.2f} ms vs {med['save reference']:.2f} ms "
                f"({med['save ours'] / med['save reference']:.2f}x); load {med['load ours']:.2f} ms vs "
                f"{med['load reference']:.2f} ms ({med['load ours'] / med['load reference']:.2f}x)"
            )
    x = torch.rand(60_000, 784)
    data = VAEData("mnist-sized", x, x[:10_000].clone(), torch.zeros(60_000, dtype=torch.long), None, (28, 28))
    seconds = statistics.median(timed(lambda: data_digest(data)) for _ in range(5))
    print(f"data digest of 70,000 x 784 float32 ({(x.numel() + 10_000 * 784) * 4 / 2**20:.0f} MiB): {seconds:.2f} s")


if __name__ == "__main__":
    main()
