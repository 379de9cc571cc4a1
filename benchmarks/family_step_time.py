"""Time one training step of each variational family against a hand-written PyTorch step of the diagonal VAE.

Every variant has the same networks: an MLP encoder x (784) -> 256 (softplus) and an MLP decoder z -> 256 -> 784,
Bernoulli likelihood, Adam. The families differ in their head and their q(z|x): ``normal`` (the diagonal Normal),
``fullcov`` (a Cholesky factor), ``iaf`` (the diagonal Normal then 2 IAF steps with MADE widths 128, conditioned on
the encoder's 256 features), ``power-spherical`` (with the ``uniform-sphere`` prior); each runs as ``pyro-vae train``
runs it (``TrainStep.fast_step``: validation on the first step only, the uncompiled meanfield objective, fused
Adam). The reference is the diagonal VAE written directly in PyTorch (closed-form KL, eq. 40, plus BCE with
logits), with the project's initial weights; before timing, its loss is checked against the project's at the same z
(rel 1e-5).

Timing runs every variant in one process, interleaved step by step (the order rotated each step), on random
binarised batches; each variant's time is the median over its steps, and the reported number the median over
``--repeats`` repeats. Every step ends with ``loss.item()``.

    python benchmarks/family_step_time.py --threads 1          # batch 128, z_dim 10; about a minute
    python benchmarks/family_step_time.py --z-dim 3 --batch-size 32
    python benchmarks/family_step_time.py --prior vamp      # every family under the VampPrior

Prints one line per family (ms per step, and the ratio to the hand-written step), then ``ratios ...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import HandWrittenVAE, adam_step  # noqa: E402

from pyro_vae import VAEConfig, build  # noqa: E402
from pyro_vae.step import TrainStep, parameters_of  # noqa: E402

X_DIM, HIDDEN, LR = 784, 256, 1e-3
FAMILIES = {"normal": "standard", "fullcov": "standard", "iaf": "standard", "power-spherical": "uniform-sphere"}


def project(guide: str, z_dim: int, seed: int, prior: str | None = None) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    prior = prior or FAMILIES[guide]
    return build(VAEConfig(x_dim=X_DIM, z_dim=z_dim, hidden=(HIDDEN,), guide=guide, prior=prior))


def hand_written(z_dim: int) -> HandWrittenVAE:
    return HandWrittenVAE("mlp", (X_DIM,), HIDDEN, z_dim)


def reference_step(z_dim: int, seed: int) -> Callable[[Tensor], float]:
    ref = hand_written(z_dim)
    ref.copy_from(*project("normal", z_dim, seed))
    return adam_step(ref, LR, fused=False)[1]


def family_step(guide: str, z_dim: int, seed: int, prior: str | None = None) -> Callable[[Tensor], float]:
    model, q = project(guide, z_dim, seed, prior)
    params = parameters_of(model, q)
    elbo = pyro.infer.TraceMeanField_ELBO(vectorize_particles=True, max_plate_nesting=1)
    step = TrainStep.fast_step(model, q, elbo, params, LR)
    state: dict = {"params": {}, "constraints": {}}

    def run(x: Tensor) -> float:
        # Its own param store: all four guides register their weights under the same Pyro names.
        with pyro.get_param_store().scope(state):
            return step(x, beta=1.0)

    return run


def check_reference(z_dim: int, seed: int) -> None:
    """The hand-written loss equals the project's meanfield loss at the same z."""
    x = torch.bernoulli(torch.rand(64, X_DIM, generator=torch.Generator().manual_seed(seed)))
    model, guide = project("normal", z_dim, seed)
    ref = hand_written(z_dim)
    ref.copy_from(model, guide)
    with pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x)
        ours = pyro.infer.TraceMeanField_ELBO().loss(poutine.replay(model, trace), poutine.replay(guide, trace), x)
    with torch.no_grad():
        theirs = float(ref.loss(x, trace.nodes["z"]["value"]))
    assert abs(ours - theirs) <= 1e-5 * abs(theirs), (ours, theirs)


def median_times(steps: dict[str, Callable[[Tensor], float]], x: Tensor, n_steps: int, clock) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(n_steps):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t0 = clock()
            steps[name](x)
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(
    z_dim: int = 10,
    batch_size: int = 128,
    n_steps: int = 60,
    repeats: int = 3,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    prior: str | None = None,
) -> dict[str, float]:
    """Median seconds per step of the reference ("hand-written") and of each family, ``repeats`` runs of
    ``n_steps`` interleaved steps each, after 5 warm-up steps (tracing and validation) per variant. ``prior``: one
    prior for every family (e.g. "vamp"), instead of each family's own."""
    check_reference(z_dim, seed)
    steps = {"hand-written": reference_step(z_dim, seed)}
    steps.update({guide: family_step(guide, z_dim, seed, prior) for guide in FAMILIES})
    x = torch.bernoulli(torch.rand(batch_size, X_DIM, generator=torch.Generator().manual_seed(seed + 1)))
    for step in steps.values():
        for _ in range(5):
            step(x)
    runs = [median_times(steps, x, n_steps, clock) for _ in range(repeats)]
    return {name: statistics.median(run[name] for run in runs) for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="interleaved steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest when loaded)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--prior", default=None, help="one prior for every family (default: each family's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    result = measure(args.z_dim, args.batch_size, args.steps, args.repeats, clock=clock, prior=args.prior)
    base = result["hand-written"]
    priors = args.prior or "each family's own prior"
    threads = torch.get_num_threads()
    print(f"z_dim {args.z_dim}, batch {args.batch_size}, {priors}, {threads} thread(s), {args.clock} clock")
    for name, seconds in result.items():
        print(f"{name:>16}: {1000 * seconds:7.2f} ms/step  ({seconds / base:.2f}x the hand-written step)")
    print("ratios " + " ".join(f"{name}={result[name] / base:.2f}" for name in FAMILIES))


if __name__ == "__main__":
    main()
