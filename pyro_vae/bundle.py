"""A self-contained, checksummed bundle of a trained run (``pyro-vae export RUN DIR``), and reading one back.

A bundle directory holds:

- ``weights.safetensors``: the model's and guide's tensors (``model.<name>``, ``guide.<name>``) in the safetensors
  format, which holds tensors only: loading it runs no code (unlike a pickle);
- ``config.json``: the run's ``TrainConfig``, from which ``pyro_vae.build`` makes the model and guide again;
- ``run.json``: the bundle's format, which checkpoint it came from (last or best), its epoch, the per-epoch metrics
  and the SHA-256 of the data trained on;
- ``README.md``: a model card (what was trained, on what, how, its metrics, how to load it);
- ``SHA256SUMS``: the SHA-256 of each of those files, in the format of ``sha256sum`` (``sha256sum -c SHA256SUMS``
  checks a bundle by hand).

``read_bundle`` checks every digest before anything is parsed: a file changed, added to the list, or missing is a
one-line ``UserError``. ``pyro_vae.run_dir.load_run`` loads a bundle like a run directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_vae.atomic import atomic_write_text, write_bytes_atomic
from pyro_vae.errors import UserError

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
INFO = "run.json"
CARD = "README.md"
MANIFEST = "SHA256SUMS"
#: The files a bundle holds besides its manifest, each listed in it.
BUNDLE_FILES = (WEIGHTS, CONFIG, INFO, CARD)
BUNDLE_FORMAT = 1


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle directory (it has a ``SHA256SUMS`` and no checkpoint)."""
    path = Path(path)
    return (path / MANIFEST).is_file() and not (path / "checkpoint.pt").exists()


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("bundles need the safetensors package: pip install 'pyro-vae[export]'") from None
    return safetensors.torch


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """What ``read_bundle`` gives: the config's JSON text, the weights by module, and ``run.json``'s record."""

    config_text: str
    model: dict[str, torch.Tensor]
    guide: dict[str, torch.Tensor]
    info: dict[str, Any]


def write_bundle(out: str | Path, config_text: str, state: dict[str, Any], which: str, card: str) -> list[Path]:
    """Write the bundle of the checkpoint ``state`` (``which``: "last" or "best") into the directory ``out``, each
    file atomically, the manifest last (a bundle whose manifest is missing or wrong is refused when read)."""
    st = _safetensors()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # no manifest of an older bundle over the new files
    # Cloned: safetensors refuses tensors that share memory (a prior may share the guide's encoder).
    tensors = {
        f"{kind}.{k}": v.detach().cpu().clone().contiguous()
        for kind in ("model", "guide")
        for k, v in state[kind].items()
    }
    write_bytes_atomic(out / WEIGHTS, st.save(tensors, metadata={"format": f"pyro-vae bundle {BUNDLE_FORMAT}"}))
    atomic_write_text(out / CONFIG, config_text.rstrip("\n") + "\n")
    info = {
        "format": BUNDLE_FORMAT,
        "checkpoint": which,
        "epoch": int(state["epoch"]),
        "step": int((state.get("partial") or {}).get("step", 0)),
        "data_digest": state.get("data_digest"),
        "metrics": json.loads(state["metrics"]),
    }
    atomic_write_text(out / INFO, json.dumps(info, indent=2) + "\n")
    atomic_write_text(out / CARD, card)
    atomic_write_text(out / MANIFEST, "".join(f"{sha256(out / name)}  {name}\n" for name in BUNDLE_FILES))
    return [out / name for name in (*BUNDLE_FILES, MANIFEST)]


def _manifest(path: Path) -> dict[str, str]:
    try:
        lines = (path / MANIFEST).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the bundle's manifest {path / MANIFEST} ({err})") from None
    digests: dict[str, str] = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise UserError(f"{path / MANIFEST} is not a SHA-256 manifest (line {line[:60]!r})")
        digests[name] = digest
    if missing := [name for name in BUNDLE_FILES if name not in digests]:
        raise UserError(f"{path / MANIFEST} does not list {', '.join(missing)}: not a pyro-vae bundle")
    return digests


def read_bundle(path: str | Path) -> Bundle:
    """Check the bundle in ``path`` against its manifest, then read it; one line for any mismatch."""
    path = Path(path)
    for name, digest in _manifest(path).items():
        file = path / name
        if name not in BUNDLE_FILES or not file.is_file():
            raise UserError(f"bundle {path}: {name} is {'missing' if name in BUNDLE_FILES else 'not a bundle file'}")
        if sha256(file) != digest:
            raise UserError(
                f"bundle {path}: {name} does not match its SHA-256 in {MANIFEST} (changed after export); "
                "export the run again, or get an intact copy"
            )
    st = _safetensors()
    tensors = st.load_file(str(path / WEIGHTS))
    split: dict[str, dict[str, torch.Tensor]] = {"model": {}, "guide": {}}
    for key, value in tensors.items():
        kind, _, name = key.partition(".")
        if kind not in split:
            raise UserError(f"bundle {path}: unexpected tensor {key!r} in {WEIGHTS}")
        split[kind][name] = value
    info = json.loads((path / INFO).read_text())
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise UserError(f"bundle {path}: {INFO} is not of bundle format {BUNDLE_FORMAT}")
    return Bundle((path / CONFIG).read_text(), split["model"], split["guide"], info)


def model_card(config: dict[str, Any], info: dict[str, Any], source: str) -> str:
    """The bundle's README.md: what was trained, how, its last metrics, and how to load it."""
    model = config["model"]
    last = info["metrics"][-1] if info["metrics"] else {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in last.items() if isinstance(v, float))
    preset = f" (preset {config['preset']})" if config.get("preset") else ""
    return f"""# pyro-vae model: {model["prior"]} prior, {model["likelihood"]} likelihood, z_dim {model["z_dim"]}

Exported from the run `{source}` ({info["checkpoint"]} checkpoint, epoch {info["epoch"]}) by `pyro-vae export`.

- data: {config["dataset"]}; encoder {model["encoder"]}, decoder {model["decoder"]}, guide {model["guide"]},
  hidden {model["hidden"]}
- training: --elbo {config["elbo"]}, {config["particles"]} particle(s), {config["epochs"]} epochs{preset}, batch
  {config["batch_size"]}, lr {config["lr"]} ({config["lr_schedule"]} schedule), seed {config["seed"]}

## Metrics of epoch {last.get("epoch", info["epoch"])} (nats per example)

| metric | value |
| --- | --- |
{rows}

## Loading

```python
from pyro_vae import load_run
run = load_run("THIS_DIRECTORY", with_data=False)   # checks SHA256SUMS first
run.model, run.guide
```

Files: `weights.safetensors` (tensors only), `config.json` (the TrainConfig), `run.json` (epoch, metrics),
`SHA256SUMS` (`sha256sum -c SHA256SUMS` checks them).
"""
