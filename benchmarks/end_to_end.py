"""The whole training run as a user waits for it: ``pyro_vae.train()`` against a hand-written PyTorch loop.

Both sides train the same VAE (the project's initial weights copied into the hand-written network), on the same
split, with the same fused Adam (``torch.optim.Adam(fused=True)``, what the library's ``make_optimizer`` builds),
learning rate, batch size and epochs, in one process, one thread, interleaved repeats (the order alternates):

- ``train(config, out, data=data, progress=False, figures=False)``: everything the Python API does (run lock,
  checks, the steps, the test ELBO after every epoch, checkpoints, metrics.jsonl; with ``--jit``, also the JIT
  tracing and its check); figures are left out, since the hand-written loop draws none;
- the hand-written loop (it lives only here; its network is ``benchmarks/reference.py``'s): per epoch a fresh
  Bernoulli draw of the grey training pixels and a shuffled permutation, the steps (closed-form KL, Odaibo's
  eq. 40, + BCE with logits, each summed over the batch), ``loss.item()`` and a finiteness check per step, the
  test ELBO (one z per test image, as the trainer's ``eval_samples=1``) after every epoch, and one ``torch.save``
  of model and optimizer at the end.

Before timing, the two losses (the summed one the loop trains on, and the per-example one that scores) are checked
to agree with Pyro's at the same z (rel 1e-5). After training, both runs' test
ELBO is scored by this file's own code (``score``: the hand-written ELBO, ``--score-samples`` z per test image,
same seed for both), with its standard error over images; they should agree within seed noise.

Cases: ``digits`` (MLP 64-256-10, batch 128, 50 epochs), ``mnist-mlp`` (MLP 784-400-20, batch 128, 10 epochs),
``mnist-conv`` (the project's conv networks, z = 20, batch 128, 1 epoch by default: a conv epoch is ~30 s per side
on one core). MNIST is read from ``--data-dir`` (torchvision's layout, never downloaded here).

    python benchmarks/end_to_end.py --data-dir ../shared/data                  # all three, 3 repeats
    python benchmarks/end_to_end.py --cases digits --repeats 7
    python benchmarks/end_to_end.py --quick --data-dir ../shared/data          # fewer epochs, 1 repeat: a smoke run

The last line is ``e2e_digits=<x> e2e_mnist_mlp=<y> e2e_mnist_conv=<z>``: median wall time of ``train()`` over
the hand-written loop's, per case (``nan`` for a case not run).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
from pyro.infer import TraceMeanField_ELBO  # noqa: E402
from reference import HandWrittenVAE  # noqa: E402

from pyro_vae import TrainConfig, VAEConfig, build, train  # noqa: E402
from pyro_vae.data import VAEData, load_data  # noqa: E402


@dataclasses.dataclass
class Case:
    name: str
    dataset: str
    arch: str  # "mlp" or "conv"
    z_dim: int
    hidden: int
    epochs: int
    quick_epochs: int
    lr: float = 1e-3
    batch_size: int = 128


CASES = {
    "digits": Case("digits", "digits", "mlp", 10, 256, 50, 10),
    "mnist-mlp": Case("mnist-mlp", "mnist", "mlp", 20, 400, 10, 1),
    "mnist-conv": Case("mnist-conv", "mnist", "conv", 20, 256, 1, 1),
}


def project_config(case: Case, data: VAEData, out_epochs: int, seed: int, jit: bool = False) -> TrainConfig:
    conv = case.arch == "conv"
    model = VAEConfig(
        x_shape=tuple(data.x_shape),
        x_dim=None,
        z_dim=case.z_dim,
        hidden=(case.hidden,),
        encoder="conv" if conv else "mlp",
        decoder="conv" if conv else "mlp",
    )
    return TrainConfig(
        model=model,
        dataset=case.dataset,
        epochs=out_epochs,
        batch_size=case.batch_size,
        lr=case.lr,
        seed=seed,
        device="cpu",
        threads=1,
        jit=jit,
    )


def initial_reference(config: TrainConfig, case: Case, x_shape: tuple[int, ...]) -> HandWrittenVAE:
    """The hand-written network with the project's initial weights (built under the run's seed, as train() does)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    model, guide = build(config.model)
    ref = HandWrittenVAE(case.arch, x_shape, case.hidden, case.z_dim)
    ref.copy_from(model, guide)
    return ref


def check_agreement(config: TrainConfig, case: Case, data: VAEData) -> None:
    """The hand-written loss equals TraceMeanField_ELBO's at the same z (rel 1e-5)."""
    pyro.set_rng_seed(config.seed)
    model, guide = build(config.model)
    ref = HandWrittenVAE(case.arch, tuple(data.x_shape), case.hidden, case.z_dim)
    ref.copy_from(model, guide)
    x = data.test_x_eval[:64]
    with pyro.get_param_store().scope():
        trace = poutine.trace(guide).get_trace(x)
        pyro_loss = TraceMeanField_ELBO().differentiable_loss(model, poutine.replay(guide, trace=trace), x).item()
    z = trace.nodes["z"]["value"]
    # Both forms: the summed loss the loop trains on, and the per-example one that scores the two runs.
    for form, ref_loss in (("summed", ref.loss(x, z).item()), ("per example", ref.per_example(x, z).sum().item())):
        if abs(pyro_loss - ref_loss) > 1e-5 * abs(ref_loss):
            raise SystemExit(
                f"{case.name}: loss mismatch at the same z ({form}): pyro {pyro_loss} vs hand-written {ref_loss}"
            )


def hand_written_run(config: TrainConfig, case: Case, data: VAEData, out: Path) -> tuple[HandWrittenVAE, list]:
    """The loop a PyTorch user writes: returns the trained network and the per-epoch test ELBOs."""
    ref = initial_reference(config, case, tuple(data.x_shape))
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(ref.parameters(), lr=config.lr, fused=True)
    train_x, test_x, n = data.train_x, data.test_x_eval, data.train_x.shape[0]
    history = []
    for epoch in range(config.epochs):
        ref.train()
        x_epoch = torch.bernoulli(train_x)
        total = 0.0
        for idx in torch.randperm(n).split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = ref.loss(x_epoch[idx])
            loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise SystemExit(f"hand-written loss not finite at epoch {epoch + 1}")
            total += value
        ref.eval()
        with torch.no_grad():
            history.append(
                {"epoch": epoch + 1, "train_loss": total / n, "test_elbo": -ref.loss(test_x).item() / len(test_x)}
            )
    torch.save({"model": ref.state_dict(), "optimizer": opt.state_dict()}, out / "hand_written.pt")
    return ref, history


def library_run(config: TrainConfig, data: VAEData, out: Path) -> tuple[nn.Module, nn.Module]:
    result = train(config, out / "run", data=data, progress=False, figures=False, overwrite=True)
    return result.model, result.guide


@torch.no_grad()
def score(ref: HandWrittenVAE, x: Tensor, samples: int, seed: int = 1234) -> tuple[float, float]:
    """Test ELBO per image (nats) and its standard error over images: the mean over ``samples`` z of -loss."""
    ref.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        per = torch.stack([-ref.per_example(x) for _ in range(samples)]).mean(0).double()
    return per.mean().item(), (per.std() / math.sqrt(len(per))).item()


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    w, c = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - w, time.process_time() - c, value


def run_case(case: Case, args: argparse.Namespace) -> float:
    data_dir = args.data_dir if case.dataset == "mnist" else None
    data = load_data(case.dataset, data_dir=data_dir, download=False)
    epochs = case.quick_epochs if args.quick else (args.epochs.get(case.name) or case.epochs)
    config = project_config(case, data, epochs, args.seed, args.jit)
    # train() decides on binarisation from the likelihood; the hand-written loop reads the same flags.
    build_model, _ = build(config.model)
    data.prepare(build_model.likelihood)
    check_agreement(config, case, data)
    steps = math.ceil(data.train_x.shape[0] / case.batch_size)
    print(
        f"\n## {case.name}: {case.arch} z={case.z_dim} hidden={case.hidden}, {data.train_x.shape[0]} train / "
        f"{data.test_x_eval.shape[0]} test, batch {case.batch_size}, {epochs} epochs ({steps} steps each), "
        f"lr {case.lr}, fused Adam",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        # Warm-up (not timed): imports, allocator, the first JIT trace of this process.
        warm = dataclasses.replace(config, epochs=1)
        hand_written_run(warm, case, data, root)
        library_run(warm, data, root)
        times: dict[str, list[tuple[float, float]]] = {"train()": [], "hand-written": []}
        last: dict[str, object] = {}
        for r in range(args.repeats):
            order = ["hand-written", "train()"] if r % 2 == 0 else ["train()", "hand-written"]
            for side in order:
                run = (
                    (lambda: hand_written_run(config, case, data, root))
                    if side == "hand-written"
                    else (lambda: library_run(config, data, root))
                )
                wall, cpu, last[side] = timed(run)
                times[side].append((wall, cpu))
                print(f"  repeat {r + 1} {side}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    ref_net, _ = last["hand-written"]
    lib_net = HandWrittenVAE(case.arch, tuple(data.x_shape), case.hidden, case.z_dim)
    lib_net.copy_from(*last["train()"])
    elbo_ref = score(ref_net, data.test_x_eval, args.score_samples)
    elbo_lib = score(lib_net, data.test_x_eval, args.score_samples)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    ratio, cpu_ratio = med["train()"][0] / med["hand-written"][0], med["train()"][1] / med["hand-written"][1]
    print(f"| {case.name} | side | wall s | CPU s | test ELBO (nats, +- SE) |")
    print("|---|---|---:|---:|---:|")
    for side, e in (("hand-written", elbo_ref), ("train()", elbo_lib)):
        print(f"| {case.name} | {side} | {med[side][0]:.2f} | {med[side][1]:.2f} | {e[0]:.2f} +- {e[1]:.2f} |")
    diff, se = elbo_lib[0] - elbo_ref[0], math.hypot(elbo_lib[1], elbo_ref[1])
    print(
        f"{case.name}: train() / hand-written = {ratio:.3f} wall, {cpu_ratio:.3f} CPU (medians of {args.repeats}); "
        f"test ELBO difference {diff:+.2f} nats ({diff / se:+.1f} SE of the two scores)",
        flush=True,
    )
    return ratio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (interleaved); default 3")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and 1 repeat (a smoke run, not a table)")
    parser.add_argument(
        "--epochs", nargs="+", default=[], metavar="CASE=N", help="override a case's epochs, e.g. mnist-conv=2"
    )
    parser.add_argument("--score-samples", type=int, default=10, help="z per test image when scoring (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="train() with --jit (TrainConfig.jit): the compiled step")
    parser.add_argument("--tmp", default=None, help="where the run directories go (default: the system's temp dir)")
    args = parser.parse_args(argv)
    args.epochs = {k: int(v) for k, v in (item.split("=", 1) for item in args.epochs)}
    if args.quick:
        args.repeats = 1
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, CPU, 1 thread, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    ratios = {name: math.nan for name in CASES}
    for name in args.cases:
        if CASES[name].dataset == "mnist" and not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
            print(f"\n## {name}: skipped, no MNIST under {args.data_dir} (--data-dir)")
            continue
        ratios[name] = run_case(CASES[name], args)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(" ".join(f"e2e_{name.replace('-', '_')}={ratios[name]:.3f}" for name in CASES))


if __name__ == "__main__":
    main()
