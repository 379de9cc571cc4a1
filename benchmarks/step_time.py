"""Time one SVI training step of the project against a hand-written PyTorch step.

Both build the same network, Bernoulli likelihood, sigma = softplus(s) + 1e-5, Adam, loss = closed-form KL
(eq. 40) + BCE with logits, summed over the batch:

- ``--arch mlp`` (default): encoder 784-400-(2x20), decoder 20-400-784, softplus activations (the project's MLP);
- ``--arch conv``: the project's conv networks on 1 x 28 x 28 images: encoder Conv(1->32, 4, stride 2) ReLU
  Conv(32->64, 4, stride 2) ReLU, Linear(3136->256) ReLU, Linear(256->2x20); decoder Linear(20->256) ReLU
  Linear(256->3136) ReLU, ConvTranspose(64->32, 4, stride 2) ReLU ConvTranspose(32->1, 4, stride 2).
The hand-written network (``benchmarks/reference.py``, shared by the benchmarks; no Pyro) gets the project's
initial weights (state dict copied), and before any timing the script checks that the two losses agree
at the same z (rel 1e-5) and that the ``--jit`` step (compiled and checked) gives the plain step's loss under the
same seed.

Timing runs every variant in one process, interleaved step by step (A B C A B C ..., the order rotated
each step so none always runs first), on random binarised 784-pixel batches; each variant's time is the
median over its steps, and the reported number is the median over ``--repeats`` repeats. Every step ends
with ``loss.item()`` (a training loop needs the number: NaN check, progress), the hand-written one too.

    python benchmarks/step_time.py                     # batch 32, 128, 512; ~2 minutes on 2 cores
    python benchmarks/step_time.py --ablation          # also each speed-up on its own
    python benchmarks/step_time.py --device cuda --batch-sizes 512
    python benchmarks/step_time.py --threads 1 --clock cpu   # steadier on a shared, loaded machine
    python benchmarks/step_time.py --arch conv --batch-sizes 128 --threads 1 --clock cpu

The yardstick (first row, ratio 1.00) is the hand-written step with the same fused Adam as the library's
``make_optimizer``; the row with torch's default Adam follows. The rows of the library: the default step (the model
and guide as Pyro runs them, validation on the first step only, fused Adam: what ``train()`` runs) and the ``--jit``
step (compiled, checked at the first step of each batch shape). The line before the last gives the ``--jit`` step's
ratios; the last line is ``ratio_bs128=<x> ratio_bs32=<y>``: the default step's time over the fused-Adam
hand-written step's.
On a machine whose cores are busy with other work, torch's multi-threaded kernels stall badly (OpenMP
threads wait for each other); ``--threads 1`` then gives much steadier numbers, and ``--clock cpu`` (the
process's CPU time) leaves out the time the process waits for a core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, JitTraceMeanField_ELBO, TraceMeanField_ELBO
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import HandWrittenVAE, adam_step  # noqa: E402

from pyro_vae import VAEConfig, build  # noqa: E402
from pyro_vae.step import TrainStep, make_optimizer, parameters_of  # noqa: E402

X_DIM, HIDDEN, Z_DIM = 784, 400, 20
LR = 1e-3


#: The network being timed: "mlp" or "conv" (``--arch``).
ARCH = "mlp"
CONV_HIDDEN = 256


def x_shape() -> tuple[int, ...]:
    return (1, 28, 28) if ARCH == "conv" else (X_DIM,)


def build_project(seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    if ARCH == "conv":
        config = VAEConfig(x_shape=x_shape(), z_dim=Z_DIM, hidden=(CONV_HIDDEN,), encoder="conv", decoder="conv")
    else:
        config = VAEConfig(x_dim=X_DIM, z_dim=Z_DIM, hidden=(HIDDEN,))
    model, guide = build(config)
    return model.to(device), guide.to(device)


def meanfield() -> TraceMeanField_ELBO:
    # As the trainer builds "meanfield" (pyro_vae.estimators.make_training_elbo).
    return TraceMeanField_ELBO(vectorize_particles=True, max_plate_nesting=1)


@dataclass
class Variant:
    name: str
    step: Callable[[Tensor], float]
    note: str = ""


def reference(device: torch.device) -> HandWrittenVAE:
    conv = ARCH == "conv"
    return HandWrittenVAE(ARCH, x_shape(), CONV_HIDDEN if conv else HIDDEN, Z_DIM).to(device)


def hand_written(device: torch.device, seed: int, fused: bool = False, compiled: bool = False) -> Variant:
    ref = reference(device)
    ref.copy_from(*build_project(seed, device))
    _, step = adam_step(ref, LR, fused)
    name = "hand-written PyTorch" + (", fused Adam" if fused else "")
    if compiled:
        return Variant("torch.compile(hand-written)", torch.compile(step), "compile time excluded")
    return Variant(name, step)


def pyro_svi(device: torch.device, seed: int) -> Variant:
    """Stock Pyro: SVI with pyro.optim.Adam (one torch Adam per parameter) and the param store."""
    model, guide = build_project(seed, device)
    state: dict = {"params": {}, "constraints": {}}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), meanfield())

    def step(x: Tensor) -> float:
        # Its own param store: SVI optimises what the store holds under each name.
        with pyro.get_param_store().scope(state):
            return svi.step(x)

    return Variant("Pyro SVI + pyro.optim.Adam", step)


def pyro_jit_as_shipped(device: torch.device, seed: int) -> Variant:
    """Pyro 1.9.2's JitTraceMeanField_ELBO, which re-traces at every call (the bug jit_meanfield.py fixes)."""
    model, guide = build_project(seed, device)
    params = parameters_of(model, guide)
    elbo = JitTraceMeanField_ELBO(vectorize_particles=True, max_plate_nesting=1, ignore_jit_warnings=True)
    step = TrainStep(model, guide, elbo, torch.optim.Adam(params, lr=LR), params)
    state: dict = {"params": {}, "constraints": {}}

    def run(x: Tensor) -> float:
        # pyro.ops.jit reads parameters from the store by name: give it this model's.
        with pyro.get_param_store().scope(state), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return step(x)

    return Variant("Pyro JitTraceMeanField_ELBO as shipped", run)


def train_step(
    device: torch.device, seed: int, name: str, *, fast: bool, adam: str = "default", jit: bool = False
) -> Variant:
    """The library's TrainStep on the "meanfield" ELBO; ``adam`` is "default", "fused" or "foreach"."""
    model, guide = build_project(seed, device)
    params = parameters_of(model, guide)
    if adam == "fused":
        opt = make_optimizer(params, LR)
    else:
        opt = torch.optim.Adam(params, lr=LR, foreach=adam == "foreach" or None)
    return Variant(name, TrainStep(model, guide, meanfield(), opt, params, fast=fast, jit=jit))


class ValidationOff:
    """Ablation: the plain step with Pyro's validation off after its first call (no JIT)."""

    def __init__(self, step: TrainStep) -> None:
        self.inner, self.calls = step, 0

    def __call__(self, x: Tensor) -> float:
        self.calls += 1
        with pyro.validation_enabled(self.calls == 1 and pyro.infer.util.is_validation_enabled()):
            return self.inner(x)


class AsTraced:
    """Ablation: the --jit step with its graph as traced (``estimators/_graph.py``'s simplification left out)."""

    def __init__(self, step: TrainStep) -> None:
        self.inner = step

    def __call__(self, x: Tensor) -> float:
        if self.inner.steps:
            return self.inner(x)
        with mock.patch("pyro_vae.estimators._jit.simplified", lambda compiled: compiled):
            return self.inner(x)  # the first step traces (one batch shape here)


#: The row the last line's ratios are of, and the --jit row.
DEFAULT_ROW, JIT_ROW = (
    "TrainStep (default: the model and guide as Pyro runs them)",
    "TrainStep --jit (compiled, checked)",
)


def variants(device: torch.device, seed: int, ablation: bool, compile_reference: bool) -> list[Variant]:
    vs = [
        # The yardstick: the same fused Adam the library's make_optimizer builds, so the ratio is Pyro's own cost.
        hand_written(device, seed, fused=True),
        hand_written(device, seed),
        pyro_svi(device, seed),
        train_step(device, seed, "TrainStep, validation at every step, torch's default Adam", fast=False),
        train_step(device, seed, DEFAULT_ROW, fast=True, adam="fused"),
        train_step(device, seed, JIT_ROW, fast=True, adam="fused", jit=True),
    ]
    if ablation:
        vs += [
            train_step(device, seed, "validation at every step + fused Adam", fast=False, adam="fused"),
            train_step(device, seed, "validation at every step + foreach Adam", fast=False, adam="foreach"),
            train_step(device, seed, "default step, torch's default Adam", fast=True),
            Variant(
                "--jit, graph as traced (no _graph.py passes)",
                AsTraced(train_step(device, seed, "", fast=True, adam="fused", jit=True).step),
            ),
            train_step(device, seed, "--jit, torch's default Adam", fast=True, jit=True),
            pyro_jit_as_shipped(device, seed),
        ]
    if compile_reference:
        vs.append(hand_written(device, seed, compiled=True))
    return vs


def check_agreement(device: torch.device, seed: int) -> None:
    """The two implementations compute the same loss at the same z, and the fast objective equals the plain."""
    x = torch.bernoulli(torch.rand(64, *x_shape(), generator=torch.Generator().manual_seed(seed))).to(device)
    model, guide = build_project(seed, device)
    ref = reference(device)
    ref.copy_from(model, guide)
    with pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x)
        pyro_loss = meanfield().differentiable_loss(model, poutine.replay(guide, trace=trace), x).item()
        ref_loss = ref.loss(x, trace.nodes["z"]["value"]).item()
        if abs(pyro_loss - ref_loss) > 1e-5 * abs(ref_loss):
            raise SystemExit(f"loss mismatch at the same z: pyro {pyro_loss} vs hand-written {ref_loss}")
        params = parameters_of(model, guide)
        plain = TrainStep(model, guide, meanfield(), torch.optim.SGD(params, lr=0.0), params)
        fast = TrainStep(model, guide, meanfield(), torch.optim.SGD(params, lr=0.0), params, fast=True, jit=True)
        for step in (plain, fast):  # lr = 0: parameters stay put; the --jit step's first call checks and compiles
            pyro.set_rng_seed(seed + 1)
            step(x)
        losses = []
        for step in (plain, fast):
            pyro.set_rng_seed(seed + 2)
            losses.append(step(x))
    if fast.compiled is None or abs(losses[0] - losses[1]) > 1e-5 * abs(losses[0]):
        raise SystemExit(f"--jit step loss {losses[1]} differs from the plain step's {losses[0]} under one seed")
    print(
        f"agreement: hand-written {ref_loss:.4f} vs TraceMeanField_ELBO {pyro_loss:.4f} at the same z; "
        f"--jit {losses[1]:.4f} vs plain {losses[0]:.4f} under one seed"
    )


def time_batch_size(
    vs: list[Variant], data: Tensor, batch: int, steps: int, repeats: int, warmup: int, clock: Callable[[], float]
) -> list[float]:
    n_batches = data.shape[0] // batch
    batches = [data[i * batch : (i + 1) * batch] for i in range(n_batches)]
    sync = torch.cuda.synchronize if data.device.type == "cuda" else (lambda: None)
    for v in vs:
        for i in range(warmup):
            v.step(batches[i % n_batches])
    per_repeat: list[list[float]] = [[] for _ in vs]
    for _ in range(repeats):
        times: list[list[float]] = [[] for _ in vs]
        for i in range(steps):
            x = batches[i % n_batches]
            for k in range(len(vs)):
                j = (i + k) % len(vs)
                sync()
                t0 = clock()
                vs[j].step(x)
                sync()
                times[j].append(clock() - t0)
        for j, t in enumerate(times):
            per_repeat[j].append(statistics.median(t))
    return [1e3 * statistics.median(r) for r in per_repeat]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["mlp", "conv"], default="mlp", help="the network (module docstring)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 32 128 512 (conv: 128)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant per repeat at batch 128 (default 200; conv 30)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--ablation", action="store_true", help="also time each speed-up on its own")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the hand-written step")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a loaded machine (use with "
        "--threads 1 on the CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ([128] if args.arch == "conv" else [32, 128, 512])
    args.steps = args.steps or (30 if args.arch == "conv" else 200)
    return args


def report(names: list[str], results: dict[int, list[float]], batch_sizes: list[int]) -> None:
    """The table (ms per step, ratio to the first row), then the ratio lines."""
    print()
    print("| variant | " + " | ".join(f"bs {b} ms | ratio" for b in batch_sizes) + " |")
    print("|---|" + "---:|---:|" * len(batch_sizes))
    for j, name in enumerate(names):
        cells = [f"{results[b][j]:.2f} | {results[b][j] / results[b][0]:.2f}" for b in batch_sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    default, jit = names.index(DEFAULT_ROW), names.index(JIT_ROW)
    ratios = {b: results[b][default] / results[b][0] for b in batch_sizes}
    print()
    print(
        "--jit step / hand-written (fused Adam): "
        + " ".join(f"bs{b}={results[b][jit] / results[b][0]:.3f}" for b in batch_sizes)
    )
    print(" ".join(f"ratio_bs{b}={ratios[b]:.3f}" for b in (128, 32) if b in ratios))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    global ARCH
    ARCH = args.arch
    conv = ARCH == "conv"
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available here")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    net = (
        f"conv 1x28x28 (32, 64 channels, {CONV_HIDDEN} hidden, z {Z_DIM})" if conv else f"MLP {X_DIM}-{HIDDEN}-{Z_DIM}"
    )
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"{net}, Bernoulli, Adam, {args.clock} clock"
    )
    check_agreement(device, args.seed)

    n_data = 2048 if conv else 8192
    data = torch.bernoulli(torch.rand(n_data, *x_shape(), generator=torch.Generator().manual_seed(args.seed)))
    data = data.to(device)
    results: dict[int, list[float]] = {}
    names: list[str] = []
    for batch in args.batch_sizes:
        # Fewer steps for big batches keeps every batch size at about the same wall time.
        steps = max(min(30, args.steps), args.steps * 128 // max(batch, 128))
        vs = variants(device, args.seed, args.ablation, args.compile)
        names = [v.name for v in vs]
        t0 = time.perf_counter()
        results[batch] = time_batch_size(vs, data, batch, steps, args.repeats, args.warmup, clock)
        print(f"batch {batch}: {steps} steps x {args.repeats} repeats in {time.perf_counter() - t0:.0f} s")
    report(names, results, args.batch_sizes)


if __name__ == "__main__":
    main()
