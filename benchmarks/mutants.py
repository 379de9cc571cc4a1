"""Mutation check of the statistical code: re-introduce realistic bugs one at a time and see which tests catch them.

Everything happens in a scratch copy of the committed tree (``git archive HEAD``), never in this checkout: there
each mutant replaces one exact snippet of a source file (the snippet must occur exactly once), runs the tests that
should catch it (``pytest -x -q -n 0``, the tests chosen for it, slow ones included, with the copy first on
``PYTHONPATH``) and restores
the file. A mutant is *killed* when the tests fail; the first failing test and its assertion line are printed, so
the margin can be read off (the tests' messages carry the measured values).

    python benchmarks/mutants.py                  # all mutants (about 10 minutes on an idle machine)
    python benchmarks/mutants.py --only bdmc-upper ddp-scale
    python benchmarks/mutants.py --list

The last line is ``killed=<k>/<n>``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTANTS = (
    Mutant(
        "is-aggregate-se",
        "pyro_vae/importance.py",
        "float(self.stderr.pow(2).sum().sqrt() / n)",
        "float(self.stderr.mean() / math.sqrt(n))",
        ("tests/test_importance.py", "-k", "aggregated"),
        "aggregated SE as mean(SE)/sqrt(N) instead of sqrt(sum SE^2)/N",
    ),
    Mutant(
        "is-ess",
        "pyro_vae/importance.py",
        "return torch.exp(2 * log_sum - log_sum_sq)",
        "return torch.exp(log_sum - 0.5 * log_sum_sq)",
        ("tests/test_importance.py", "-k", "hand_made or exact_posterior"),
        "ESS as sum w / sqrt(sum w^2) instead of (sum w)^2 / sum w^2",
    ),
    Mutant(
        "is-se-k",
        "pyro_vae/importance.py",
        "((k * sum_sq_normalised - 1).clamp(min=0) / (k - 1)).sqrt()",
        "((k * sum_sq_normalised - 1).clamp(min=0) / k).sqrt()",
        ("tests/test_importance.py", "-k", "hand_made or exact_posterior"),
        "per-example SE dividing by K instead of K - 1",
    ),
    Mutant(
        "is-log-k",
        "pyro_vae/importance.py",
        "log_likelihood=lse - math.log(num_samples),",
        "log_likelihood=lse - math.log(num_samples + 1),",
        ("tests/test_importance.py", "-k", "hand_made or exact_posterior"),
        "log (1/K) sum w with K + 1",
    ),
    Mutant(
        "is-elbo",
        "pyro_vae/importance.py",
        'elbo=torch.cat(parts["total"]) / num_samples,',
        'elbo=torch.cat(parts["total"]) / max(1, num_samples - 1),',
        ("tests/test_evaluation.py", "-k", "chunked or linear_gaussian_model"),
        "ELBO of the IS samples divided by K - 1",
    ),
    Mutant(
        "bdmc-upper",
        "pyro_vae/ais.py",
        "upper=-reverse.log_likelihood,",
        "upper=-reverse.log_weights.mean(0),",
        ("tests/test_ais.py", "-k", "300_steps or exact_posterior"),
        "BDMC upper bound as -mean(log W) instead of -log mean(W)",
    ),
    Mutant(
        "ais-schedule",
        "pyro_vae/ais.py",
        "for t in range(1, num_steps + 1):",
        "for t in range(2, num_steps + 1):",
        ("tests/test_ais.py", "-k", "300_steps or exact_posterior"),
        "AIS weights skip the first increment (off by one)",
    ),
    Mutant(
        "ais-accept",
        "pyro_vae/ais.py",
        "log_accept = (h0 - h1).nan_to_num(nan=-math.inf)",
        "log_accept = (h1 - h0).nan_to_num(nan=-math.inf)",
        ("tests/test_ais.py", "-k", "tightens or student_t or 300_steps"),
        "HMC accepts with the wrong sign of the energy change",
    ),
    Mutant(
        "mi-se-2x",
        "pyro_vae/collapse.py",
        "return float(terms.var(0).sum().div(m).sqrt() / n)",
        "return float(2 * terms.var(0).sum().div(m).sqrt() / n)",
        ("tests/test_collapse.py", "-k", "spread_of_repeated"),
        "SE of I(x; z) twice too large",
    ),
    Mutant(
        "mi-se-pooled",
        "pyro_vae/collapse.py",
        "return float(terms.var(0).sum().div(m).sqrt() / n)",
        "return float(terms.reshape(-1).std() / (m * n) ** 0.5)",
        ("tests/test_collapse.py", "-k", "spread_of_repeated"),
        "SE of I(x; z) pooling the between-example spread (the former formula)",
    ),
    Mutant(
        "mi-aggregate",
        "pyro_vae/collapse.py",
        "out.append(torch.logsumexp(log_q, dim=1) - math.log(n))",
        "out.append(torch.logsumexp(log_q, dim=1) - math.log(n - 1))",
        ("tests/test_collapse.py", "-k", "quadrature or log_n or identical"),
        "aggregate posterior normalised by N - 1",
    ),
    Mutant(
        "digest-shape",
        "pyro_vae/run_dir.py",
        'h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())',
        'h.update(f"T{t.dtype}:".encode())',
        ("tests/test_checkpoint.py::test_the_content_digest_survives_a_round_trip_and_changes_with_any_value",),
        "checkpoint digest ignoring tensor shapes",
    ),
    Mutant(
        "iaf-antithetic",
        "guides/iaf.py",
        "z = torch.cat([base.loc + base.scale * eps, base.loc - base.scale * eps])",
        "z = torch.cat([base.loc + base.scale * eps, base.loc + base.scale * torch.randn_like(eps)])",
        ("tests/test_iaf.py", "-k", "mean"),
        "IAF posterior mean without its antithetic pairs",
    ),
    Mutant(
        "ddp-scale",
        "pyro_vae/distributed.py",
        "(loss * ranks.world).backward()",
        "loss.backward()",
        ("tests/test_distributed.py::test_two_ranks_backpropagate_the_gradient_of_the_whole_batch",),
        "DDP backpropagates the local loss without the world-size factor",
    ),
    Mutant(
        "snr-floor",
        "pyro_vae/snr.py",
        "return math.sqrt(2.0 / (math.pi * num_draws))",
        "return math.sqrt(1.0 / (math.pi * num_draws))",
        ("tests/test_comparison_any_model.py", "-k", "noise_floor"),
        "SNR noise floor sqrt(1 / (pi R))",
    ),
    Mutant(
        "snr-percentile",
        "pyro_vae/snr.py",
        "return max(0.0, 2 * estimate - median), max(0.0, 2 * estimate - high), max(0.0, 2 * estimate - low)",
        "return estimate, low, high",
        ("tests/test_comparison_any_model.py", "-k", "corrected_snr or bootstrap_interval or table_shows"),
        "SNR percentile interval around the plug-in estimate (no bias correction)",
    ),
    Mutant(
        "kl-per-dim",
        "pyro_vae/evaluation.py",
        "kl = kl.reshape(x.shape[0], -1).mean(0)",
        "kl = kl.reshape(x.shape[0], -1).sum(0)",
        ("tests/test_evaluation.py", "-k", "kl_per_dimension or linear_gaussian_model"),
        "KL per dimension summed over the examples instead of averaged",
    ),
)


def scratch_copy(into: Path) -> Path:
    """The committed tree under ``into``, importable as installed: ``pyro_vae.guides`` and ``pyro_vae.models`` are
    the top-level ``guides/`` and ``models/`` (pyproject's package-dir), linked into the package."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in ("guides", "models"):
        (into / "pyro_vae" / name).symlink_to(into / name, target_is_directory=True)
    return into


def _first_failure(output: str) -> str:
    """The first failing test and the first assertion line after it."""
    failed = re.search(r"^FAILED (\S+)", output, re.M)
    error = re.search(r"^E\s+(.*)$", output, re.M)
    parts = [failed.group(1) if failed else "?", error.group(1).strip()[:160] if error else ""]
    return " | ".join(p for p in parts if p)


def run(mutant: Mutant, root: Path, timeout: float) -> tuple[bool, str, float]:
    """(killed, first failure, seconds) of one mutant in the copy at ``root``; the file is restored afterwards."""
    path = root / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the snippet occurs {original.count(mutant.old)} times in {mutant.path}")
    start = time.perf_counter()
    try:
        path.write_text(original.replace(mutant.old, mutant.new))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *mutant.tests]
        try:
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f} s", time.perf_counter() - start
        killed = proc.returncode != 0
        return killed, _first_failure(proc.stdout) if killed else "", time.perf_counter() - start
    finally:
        path.write_text(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="first run each mutant's tests without the mutant")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's tests (default: 900)")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTANTS:
            print(f"{m.name:16s} {m.path:28s} {m.what}")
        return 0
    killed = 0
    with tempfile.TemporaryDirectory(prefix="pyro-vae-mutants-") as scratch:
        root = scratch_copy(Path(scratch))
        if args.check:  # the unmutated copy must pass the tests, or a kill means nothing
            for m in chosen:
                dead, failure, seconds = run(Mutant(m.name, m.path, m.old, m.old, m.tests, ""), root, args.timeout)
                if dead:
                    print(f"{m.name}: the tests fail without the mutant: {failure}", file=sys.stderr)
                    return 1
        for m in chosen:
            dead, failure, seconds = run(m, root, args.timeout)
            killed += dead
            print(
                f"{m.name:16s} {'KILLED  ' if dead else 'SURVIVED'} {seconds:6.1f} s  {failure or m.what}", flush=True
            )
    print(f"killed={killed}/{len(chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
