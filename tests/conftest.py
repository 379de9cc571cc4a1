"""Test configuration: Pyro validation on, a clean parameter store and fixed seeds for every test, and a per-session
configuration directory (XDG_CONFIG_HOME), so that the plugins tests load are never remembered in the user's own."""

from __future__ import annotations

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run the test in float64 (comparisons at 1e-6 and tighter)."""
    torch.set_default_dtype(torch.float64)
    yield


@pytest.fixture(autouse=True)
def _config_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "config-home"))
