"""The DisARM paper's setting (Dong, Mnih & Tucker 2020, section 6.1), on a CPU budget: training ELBO over steps of a
VAE with 200 Bernoulli latents on dynamically binarised MNIST, for reinforce, vimco, rws, relaxed and disarm.

Protocol (every row the same):

- data: MNIST training images (torchvision's files under ``--data-dir``; default ``$PYRO_VAE_DATA_DIR``, else
  ``../shared/data`` next to the repository), a fresh binarisation x ~ Bernoulli(grey pixels) for every batch;
- model: p(z) = Bernoulli(sigmoid(a)) over 200 latents (a learned), p(x | z) Bernoulli with logits from the decoder;
  guide q(z | x) Bernoulli with logits from the encoder; "linear": one linear layer each way; "nonlinear": two hidden
  layers of 200 LeakyReLU(0.3) units each way (the paper's two architectures). Plain Pyro, written here;
- training: batch 50, Adam lr 1e-4 on model and guide (the learned baseline of reinforce has its own Adam),
  ``--steps`` steps (the paper: 10^6), seed 0, one thread;
- estimators at two evaluations of the model per example and step, as the paper compares them: reinforce K = 2
  (learned NVIL baseline), vimco K = 2, rws K = 2, relaxed K = 2 (Concrete, temperature 2/3), disarm one
  antithetic pair;
- curve: every ``--eval-every`` steps, the ELBO of 1,000 fixed training images (binarised once), 10 samples each
  (the same evaluator for every estimator: the discrete ELBO, whatever the estimator optimises).

    python benchmarks/disarm_mnist.py --out runs/disarm --steps 2000
    python benchmarks/disarm_mnist.py --out runs/disarm --report      # table and curves from OUT/results.json

Writes OUT/results.json and OUT/curves.png, and prints a markdown table (final ELBO, ms per step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyro_vae.data import load_data  # noqa: E402
from pyro_vae.estimators import make_elbo  # noqa: E402

Z_DIM, X_DIM, HIDDEN = 200, 784, 200
ESTIMATORS = {
    "reinforce": {"num_particles": 2, "baseline": "learned"},
    "vimco": {"num_particles": 2},
    "rws": {"num_particles": 2},
    "relaxed": {"num_particles": 2, "temperature": 2.0 / 3.0},
    "disarm": {"num_particles": 1},
}
ARCHITECTURES = ("linear", "nonlinear")


def default_data_dir() -> Path:
    """$PYRO_VAE_DATA_DIR, else ../shared/data next to the repository (the project's shared checkout layout)."""
    return Path(os.environ.get("PYRO_VAE_DATA_DIR") or ROOT.parent / "shared" / "data")


def network(n_in: int, n_out: int, architecture: str) -> nn.Module:
    if architecture == "linear":
        return nn.Linear(n_in, n_out)
    return nn.Sequential(
        nn.Linear(n_in, HIDDEN),
        nn.LeakyReLU(0.3),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LeakyReLU(0.3),
        nn.Linear(HIDDEN, n_out),
    )


class BernoulliVAE(nn.Module):
    """200 Bernoulli latents; encoder and decoder of the given architecture."""

    def __init__(self, architecture: str, train_mean: torch.Tensor) -> None:
        super().__init__()
        self.encoder = network(X_DIM, Z_DIM, architecture)
        self.decoder = network(Z_DIM, X_DIM, architecture)
        self.prior_logits = nn.Parameter(torch.zeros(Z_DIM))
        with torch.no_grad():  # the paper's output bias: the logit of the mean training image
            last = self.decoder if architecture == "linear" else self.decoder[-1]
            last.bias.copy_(torch.logit(train_mean.clamp(1e-3, 1 - 1e-3)))
        self.register_buffer("train_mean", train_mean)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            prior = self.prior_logits.expand(x.shape[0], Z_DIM)
            z = pyro.sample("z", dist.Bernoulli(logits=prior).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x - self.train_mean)).to_event(1))


def train_row(name: str, architecture: str, images: torch.Tensor, fixed: torch.Tensor, steps: int, every: int) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    vae = BernoulliVAE(architecture, images.mean(0))
    elbo = make_elbo(name, max_plate_nesting=1, **ESTIMATORS[name])
    evaluator = Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    curve, seconds = [], 0.0

    def evaluate(step: int) -> None:
        with torch.no_grad():
            value = -evaluator.loss(vae.model, vae.guide, fixed) / fixed.shape[0]
        curve.append((step, value))
        print(f"{architecture:9s} {name:9s} step {step:6d}  train ELBO {value:9.2f}", flush=True)

    evaluate(0)
    for step in range(1, steps + 1):
        index = torch.randint(images.shape[0], (50,), generator=gen)
        x = torch.bernoulli(images[index], generator=gen)
        start = time.perf_counter()
        optimizer.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, x)
        optimizer.step()
        seconds += time.perf_counter() - start
        if step % every == 0:
            evaluate(step)
    return {"estimator": name, "architecture": architecture, "curve": curve, "ms_per_step": 1000 * seconds / steps}


def report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    shown = [a for a in ARCHITECTURES if any(r["architecture"] == a for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for ax, architecture in zip(axes[0], shown, strict=True):
        for row in (r for r in rows if r["architecture"] == architecture):
            steps, values = zip(*row["curve"], strict=True)
            ax.plot(steps, values, label=row["estimator"])
        ax.set_title(f"{architecture}: 200 Bernoulli latents, batch 50, Adam 1e-4")
        ax.set_xlabel("step")
        ax.set_ylabel("training ELBO (nats, 1,000 images)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    steps = results["steps"]
    print(f"\n{steps} steps = {steps / 1e6:.2%} of the paper's 10^6; final training ELBO (nats), ms per step")
    print("| architecture | estimator | ELBO at step 0 | final ELBO | ms per step |")
    print("|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["architecture"], -r["curve"][-1][1])):
        first, last = row["curve"][0][1], row["curve"][-1][1]
        print(f"| {row['architecture']} | {row['estimator']} | {first:.1f} | {last:.1f} | {row['ms_per_step']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="holds MNIST/raw/ (default: see the docstring)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--report", action="store_true", help="only the table and curves from OUT/results.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    if args.report:
        report(json.loads(path.read_text()), args.out)
        return 0
    torch.set_num_threads(1)
    data = load_data("mnist", data_dir=args.data_dir or default_data_dir(), download=False)
    images = data.train_x.reshape(data.train_x.shape[0], -1)
    fixed = torch.bernoulli(images[:1000], generator=torch.Generator().manual_seed(1))
    results = {"steps": args.steps, "rows": []}
    for architecture in args.architectures.split(","):
        for name in args.estimators.split(","):
            results["rows"].append(train_row(name, architecture, images, fixed, args.steps, args.eval_every))
            path.write_text(json.dumps(results))  # after every row: an interrupted run keeps what it did
    report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
