"""A plugin file as a user would write one: a Student-t prior with its own option, registered by name.

p(z) = prod_j StudentT(df, 0, 1): heavier tails than N(0, I). No KL to the Normal guide is registered, so the
meanfield ELBO estimates the KL by Monte Carlo. Importing this file (``--plugin tests/plugins/student_t_prior.py``)
registers the prior "student-t" with the flag ``--prior-df``. When the environment variable
``STUDENT_T_MARKER`` names a file, importing it appends a line there, so a test can tell whether it was imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import register_prior


@dataclass
class StudentTOptions:
    """Fields:
    df: degrees of freedom of the Student-t prior (small: heavy tails; large: close to N(0, I)).
    """

    df: float = 3.0


class StudentTPrior(nn.Module):
    """p(z) = prod_j StudentT(df, 0, 1), event shape (z_dim,)."""

    def __init__(self, z_dim: int, df: float) -> None:
        super().__init__()
        self.register_buffer("df", torch.tensor(float(df)))
        self.register_buffer("loc", torch.zeros(z_dim))

    def forward(self) -> dist.Distribution:
        return dist.StudentT(self.df, self.loc, torch.ones_like(self.loc)).to_event(1)


register_prior(
    "student-t",
    lambda config, options: StudentTPrior(config.z_dim, options.df),
    options=StudentTOptions,
    description="prod_j StudentT(df, 0, 1), --prior-df",
)

if os.environ.get("STUDENT_T_MARKER"):
    with open(os.environ["STUDENT_T_MARKER"], "a") as marker:
        marker.write("imported\n")
