"""Is the two-layer VAE's slow start the model's or the library's? The library against a hand-written PyTorch twin.

Burda et al.'s two-stochastic-layer VAE (``benchmarks/mnist_nll.py``'s ``HIER``: x -> 2 x 200 tanh -> z1 (100) ->
2 x 100 tanh -> z2 (50), and back) climbs slowly on MNIST: -153.5 after 9 epochs under the project's protocol, where
the one-layer VAE is near -104. This script trains the library's model and guide (``pyro_vae.build``, the
``"trace"`` estimator, ``TrainStep`` and ``make_optimizer``, as ``pyro_vae.train`` runs them) side by side with
``reference.HandWrittenTwoLayerVAE``, the same networks written in PyTorch alone (no Pyro):

- both start from the same weights (the library's initialisation, copied) and, before any training, the script checks
  that the two ELBOs agree at the same (z1, z2) to 1e-5 relative;
- both see the same batches: each epoch one fresh binarisation of the training images (``VAEData.train_epoch``) and one
  shuffle, shared;
- both draw the same noise: torch's generator is seeded with the step number before each side's step, and both draw
  z1's then z2's standard normals in the same shapes (Pyro's guess of the plate nesting, which draws too, is made
  before training). The two runs then differ only by rounding, which grows over the
  steps as training is chaotic;
- a second hand-written run from the same start with other noise (``--no-spread`` leaves it out) gives the
  run-to-run spread that a difference between library and reference must be read against;
- each epoch, every run's test ELBO (one z per image, all 10,000 test images binarised with the project's fixed seed)
  is computed by the hand-written code with the same evaluation noise, so the rows differ only by their weights.

The last line is ``max_abs_diff=<nats> spread=<nats> time_ratio=<library / hand-written CPU time per step>``.

    python benchmarks/two_layer_reference.py --data-dir ../shared/data                 # 3 epochs, batch 100: ~1 min
    python benchmarks/two_layer_reference.py --data-dir ../shared/data --protocol burda2016 --epochs 3   # batch 20

``--data-dir`` holds MNIST/raw/ (default ``$PYRO_VAE_DATA_DIR``, else ``../shared/data`` beside the repository, this
repository's own checkout layout). Runs on one thread by default (``--threads``): steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_nll import HIER, PROTOCOL  # noqa: E402
from reference import HandWrittenTwoLayerVAE, adam_step  # noqa: E402

from pyro_vae import VAEConfig, build  # noqa: E402
from pyro_vae.data import VAEData, load_data  # noqa: E402
from pyro_vae.estimators import make_elbo  # noqa: E402
from pyro_vae.step import TrainStep, make_optimizer, parameters_of  # noqa: E402

#: (batch size, Adam's epsilon) of each protocol: the project's (mnist_nll.PROTOCOL) and Burda et al.'s first stage.
PROTOCOLS = {"project": (PROTOCOL["batch_size"], 1e-8), "burda2016": (20, 1e-4)}
EVAL_SEED = 12345


def default_data_dir() -> Path:
    """$PYRO_VAE_DATA_DIR, else ../shared/data next to the repository (this repository's checkout layout)."""
    return Path(os.environ.get("PYRO_VAE_DATA_DIR") or ROOT.parent / "shared" / "data")


def check_same_elbo(model: torch.nn.Module, guide: torch.nn.Module, ref: HandWrittenTwoLayerVAE, x: Tensor) -> float:
    """The largest relative difference between the library's log p(x, z) - log q(z|x) (Pyro's traces) and the
    hand-written one at the same (z1, z2), per image."""
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        ours = sum(site["log_prob"] for site in model_trace.nodes.values() if site["type"] == "sample")
        ours = ours - sum(site["log_prob"] for site in guide_trace.nodes.values() if site["type"] == "sample")
        z1, z2 = (guide_trace.nodes[name]["value"] for name in ("z1", "z2"))
        theirs = ref.per_example(x.reshape(len(x), -1), z1, z2)
    return float(((ours - theirs).abs() / theirs.abs()).max())


def test_elbo(net: HandWrittenTwoLayerVAE, x: Tensor) -> float:
    """The mean one-sample ELBO over ``x``, with the same evaluation noise for every network."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(EVAL_SEED)
        return float(torch.cat([net.per_example(b) for b in x.split(1000)]).mean())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="holds MNIST/raw/ (default: see the docstring)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="project")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=PROTOCOL["lr"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-examples", type=int, default=None, help="train on the first N images (all: none)")
    parser.add_argument("--no-spread", action="store_true", help="leave out the second hand-written run")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or (args.train_examples is not None and args.train_examples < 1):
        parser.error("--epochs, --threads and --train-examples must be at least 1")
    return args


def side_by_side(
    steps: dict[str, Callable[[Tensor], float]],
    data: VAEData,
    pair: tuple[torch.nn.Module, torch.nn.Module],
    twins: tuple[HandWrittenTwoLayerVAE, HandWrittenTwoLayerVAE],
    args: argparse.Namespace,
    batch: int,
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Train the three runs on the same batches, printing a row per epoch: (|library - reference| per epoch,
    |other - reference| per epoch, CPU seconds per step of library and reference)."""
    ref, other = twins
    scratch = HandWrittenTwoLayerVAE()  # holds the library's weights for the shared evaluation
    test_x = data.test_x_eval.reshape(len(data.test_x_eval), -1)
    print("| epoch | library | hand-written, same noise | difference | hand-written, other noise |")
    print("|---:|---:|---:|---:|---:|")
    times: dict[str, list[float]] = {"library": [], "reference": []}
    diffs, spreads = [], []
    generator = torch.Generator().manual_seed(args.seed)
    n = 0
    for epoch in range(1, args.epochs + 1):
        x_epoch = data.train_epoch()
        order = torch.randperm(len(x_epoch), generator=generator)
        for start in range(0, len(order), batch):
            x = x_epoch[order[start : start + batch]]
            n += 1
            for name, given in (("library", x), ("reference", x.reshape(len(x), -1))):
                torch.manual_seed(n)  # the same noise for both sides
                t = time.process_time()
                steps[name](given)
                times[name].append(time.process_time() - t)
            if not args.no_spread:
                torch.manual_seed(10**9 + n)
                steps["other"](x.reshape(len(x), -1))
        scratch.copy_from(*pair)
        lib, same = test_elbo(scratch, test_x), test_elbo(ref, test_x)
        diffs.append(abs(lib - same))
        cells = [f"{lib:.2f}", f"{same:.2f}", f"{lib - same:+.2f}", ""]
        if not args.no_spread:
            alt = test_elbo(other, test_x)
            spreads.append(abs(alt - same))
            cells[-1] = f"{alt:.2f}"
        print(f"| {epoch} | " + " | ".join(cells) + " |", flush=True)
    return diffs, spreads, times


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    data_dir = args.data_dir or default_data_dir()
    if not (data_dir / "MNIST" / "raw").is_dir():
        print(f"error: no MNIST/raw/ under {data_dir}: give --data-dir or set PYRO_VAE_DATA_DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    batch, eps = PROTOCOLS[args.protocol]

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    model, guide = build(VAEConfig(z_dim=PROTOCOL["z_dim"], likelihood="bernoulli", x_shape=(1, 28, 28), **HIER))
    data = load_data("mnist", data_dir=data_dir, download=False)
    if args.train_examples is not None:
        data.train_x = data.train_x[: args.train_examples]
    data.prepare(model.likelihood)

    ref = HandWrittenTwoLayerVAE()
    ref.copy_from(model, guide)
    rel = check_same_elbo(model, guide, ref, data.test_x_eval[:100])
    print(f"same weights, same (z1, z2): ELBOs agree to {rel:.1e} (relative)")
    if rel > 1e-5:
        print("error: the hand-written ELBO is not the library's", file=sys.stderr)
        return 1
    other = HandWrittenTwoLayerVAE()
    other.load_state_dict(ref.state_dict())
    params = parameters_of(model, guide)
    elbo = make_elbo("trace")
    with torch.random.fork_rng():
        # Pyro's vectorised ELBO runs model and guide once at its first call to guess max_plate_nesting, drawing
        # noise: done here, so that from step 1 on both sides draw the same.
        elbo.loss(model, guide, data.test_x_eval[:batch])
    steps = {
        "library": TrainStep(model, guide, elbo, make_optimizer(params, args.lr, eps=eps), params, fast=True),
        # The hand-written steps use the same fused Adam as make_optimizer.
        "reference": adam_step(ref, args.lr, fused=True, eps=eps)[1],
        "other": adam_step(other, args.lr, fused=True, eps=eps)[1],
    }
    print(
        f"protocol {args.protocol}: batch {batch}, Adam lr {args.lr} eps {eps}, {len(data.train_x)} images, "
        f"seed {args.seed}"
    )
    diffs, spreads, times = side_by_side(steps, data, (model, guide), (ref, other), args, batch)
    ratio = statistics.median(times["library"]) / statistics.median(times["reference"])
    spread = f"{max(spreads):.2f}" if spreads else "nan"
    print(f"max_abs_diff={max(diffs):.2f} spread={spread} time_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
