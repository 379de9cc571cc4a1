"""Our dataclass -> argparse layer (pyro_vae/commands/options.py) against tyro, jsonargparse and simple-parsing.

Each library builds a parser for ``TrainConfig`` (with its ``VAEConfig``) the way its documentation suggests for
flat option names (tyro: ``OmitArgPrefixes``; simple-parsing: dashes, no root prefix; jsonargparse:
``add_class_arguments``, whose names stay ``--model.z_dim``), and parses the same command line in its own syntax.
Measured for each, in fresh processes: the import time (median of 5, Python's own start-up subtracted), whether the
command line gives the same ``TrainConfig`` as ours, how many lines of stderr a bad value (``--epochs abc``) and a
mistyped option (``--lrr 3``) print, whether an abbreviation (``--epoch 3``) is accepted, whether the registries'
choices (``--prior``) appear in the help, and whether the "Fields:" docstrings reach the option's own help line.
The libraries are not dependencies of pyro-vae: ``pip install tyro jsonargparse simple-parsing`` first (missing
ones are skipped).

    python benchmarks/cli_libraries.py
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = (
    "--z-dim 3 --hidden 64 32 --prior gaussian --prior-loc 0 1 0.5 --prior-learn --encoder-hidden --epochs 7 "
    "--clip-norm 10"
)
COMMAND_LINES = {
    "ours": OURS + " --no-download",
    "tyro": OURS + " --no-download",
    "simple_parsing": OURS + " --download false",
    "jsonargparse": "--model.z_dim 3 --model.hidden [64,32] --model.prior gaussian "
    '--model.options {"prior":{"loc":[0,1,0.5],"learn":true},"encoder":{"hidden":[]}} '
    "--epochs 7 --clip_norm 10 --download false",
}

# One program per library: parse argv into a TrainConfig and print it as JSON (exit code 2 on a parse error).
PROGRAM = """
import json, sys
sys.path.insert(0, {root!r})
from pyro_vae.config import TrainConfig, VAEConfig
which, argv = sys.argv[1], sys.argv[2:]
if which == "ours":
    from pyro_vae.cli import make_parser
    from pyro_vae.commands.options import given_options
    args = make_parser().parse_args(["train", "--out", "x", *argv])
    config = TrainConfig.from_options(*given_options(args))
elif which == "tyro":
    import tyro
    config = tyro.cli(TrainConfig, args=argv, config=(tyro.conf.OmitArgPrefixes,))
elif which == "jsonargparse":
    from jsonargparse import ArgumentParser
    parser = ArgumentParser()
    parser.add_class_arguments(TrainConfig, nested_key=None)
    config = parser.instantiate(parser.parse_args(argv))
    config = TrainConfig(**{{k: v for k, v in vars(config).items()}})
else:
    import simple_parsing
    dashes, flat = simple_parsing.DashVariant.DASH, simple_parsing.NestedMode.WITHOUT_ROOT
    parser = simple_parsing.ArgumentParser(add_option_string_dash_variants=dashes, nested_mode=flat)
    parser.add_arguments(TrainConfig, dest="config")
    config = parser.parse_args(argv).config
print(json.dumps(config.to_dict(), sort_keys=True))
"""


def run(which: str, argv: list[str]) -> subprocess.CompletedProcess:
    code = PROGRAM.format(root=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, which, *argv], capture_output=True, text=True, timeout=300)


def import_seconds(module: str) -> float:
    def once(statement: str) -> float:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout)

    return statistics.median(once(f"import {module}") for _ in range(5))


def main() -> None:
    reference = json.loads(run("ours", COMMAND_LINES["ours"].split()).stdout)
    rows = []
    for which, module in (
        ("ours", "argparse"),
        ("tyro", "tyro"),
        ("jsonargparse", "jsonargparse"),
        ("simple_parsing", "simple_parsing"),
    ):
        if which != "ours" and importlib.util.find_spec(module) is None:
            print(f"{which}: not installed, skipped")
            continue
        parsed = run(which, COMMAND_LINES[which].split())
        same = parsed.returncode == 0 and json.loads(parsed.stdout) == reference
        error = (parsed.stderr.strip().splitlines() or ["?"])[-1][:90] if parsed.returncode else ""
        bad = run(which, ["--epochs", "abc"])
        typo = run(which, ["--lrr", "3"])
        abbrev = run(which, ["--epoch", "3"] if which != "jsonargparse" else ["--epoch", "3"])
        helped = run(which, ["--help"])
        rows.append(
            {
                "library": which,
                "import_ms": round(1000 * import_seconds(module)),
                "same_config": same,
                "parse_error": error,
                "bad_value_stderr_lines": len(bad.stderr.strip().splitlines()),
                "typo_stderr_lines": len(typo.stderr.strip().splitlines()),
                "typo_suggests_lr": "--lr" in typo.stderr,
                "abbreviation_accepted": abbrev.returncode == 0,
                "prior_choices_in_help": "standard,gaussian" in helped.stdout,
                "field_docs_in_help": re.search(r"--z[-_]dim[ A-Z_│]*latent dimension", helped.stdout) is not None,
                "help_lines": len(helped.stdout.splitlines()),
            }
        )
    for row in rows:
        print(json.dumps(row))
    lines = sum(len((ROOT / f).read_text().splitlines()) for f in ("pyro_vae/commands/options.py",))
    print(f"our layer: pyro_vae/commands/options.py has {lines} lines")


if __name__ == "__main__":
    main()
