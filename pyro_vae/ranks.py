"""Which process of a ``torchrun`` launch this is, read from the launcher's environment (``RANK``, ``WORLD_SIZE``).

Low in the layers so that the run directory's lock (``pyro_vae.run_dir``) and the commands can ask whether this
process is the one that writes (rank 0) before any process group exists; ``pyro_vae.distributed`` sets the group up.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (torch.distributed's launcher sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's global rank (0 outside ``torchrun``)."""
    return int(os.environ.get("RANK", "0"))


def is_writer() -> bool:
    """True for the process that writes the run directory: rank 0, or the only process."""
    return rank() == 0
