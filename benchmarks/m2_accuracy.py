"""M2's test accuracy (Kingma et al. 2014) against plain classifiers fitted on the same labelled examples only.

Protocol: ``pyro_vae.train`` of ``--model m2`` (Bernoulli likelihood, dynamic binarisation, Adam lr 1e-3, the
balanced labelled subset of ``pyro_vae.labelled_data.choose_labelled``, ``--labelled-batch`` labelled rows in every
step, alpha Kingma et al.'s 0.1 N unless ``--alpha``), then the accuracy of argmax_y q(y|x) on
the whole test set; next to it scikit-learn's ``LogisticRegression(max_iter=5000)`` and
``MLPClassifier(hidden_layer_sizes=(HIDDEN,))`` fitted on the same labelled examples' grey pixels. A run that is
already there is continued (``--epochs`` is its total), so a budget can be spread over sessions.

    python benchmarks/m2_accuracy.py --out runs/m2-digits --labelled 100 --epochs 200 --seeds 0 1 2
    nice timeout -s TERM 780 python benchmarks/m2_accuracy.py --dataset mnist --data-dir ../shared/data \\
        --hidden 500 --z-dim 50 --batch-size 100 --out runs/m2-mnist --epochs 3   # then --epochs 6 continues it
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from pyro_vae import TrainConfig, VAEConfig, train
from pyro_vae.labelled_data import choose_labelled
from pyro_vae.semi_supervised import classifier_accuracy


def one_seed(args: argparse.Namespace, seed: int) -> str:
    options = {"model": {"labelled": args.labelled, "alpha": args.alpha, "labelled_batch": args.labelled_batch}}
    model = VAEConfig(z_dim=args.z_dim, hidden=(args.hidden,), model="m2", options=options)
    config = TrainConfig(
        model=model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=False,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        eval_every=args.epochs,
    )
    out = args.out / f"seed{seed}"
    start = time.perf_counter()
    result = train(config, out, resume=(out / "checkpoint.pt").exists(), progress=False, figures=False)
    data = result.data
    m2 = classifier_accuracy(result.guide, data.test_x, data.test_y)
    chosen = choose_labelled(data.train_y, args.labelled, 10).numpy()
    x, y = data.train_x.flatten(1).numpy()[chosen], data.train_y.numpy()[chosen]
    xt, yt = data.test_x.flatten(1).numpy(), data.test_y.numpy()
    logreg = LogisticRegression(max_iter=5000).fit(x, y).score(xt, yt)
    mlp = MLPClassifier(hidden_layer_sizes=(args.hidden,), max_iter=2000, random_state=seed).fit(x, y).score(xt, yt)
    epochs = len(result.metrics)
    print(f"seed {seed}: test ELBO {result.metrics[-1].get('test_elbo')}", flush=True)
    return (
        f"| {args.dataset} | {args.labelled} | {seed} | {epochs} | {100 * m2:.2f}% | {100 * logreg:.2f}% | "
        f"{100 * mlp:.2f}% | {time.perf_counter() - start:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=None, help="default: Kingma et al.'s 0.1 N")
    parser.add_argument("--labelled-batch", type=int, default=100, help="labelled rows in every step")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(
        "| data | labels | seed | epochs | M2 | logistic regression | MLP | wall |\n|---|---|---|---|---|---|---|---|"
    )
    for seed in args.seeds:
        print(one_seed(args, seed), flush=True)


if __name__ == "__main__":
    main()
