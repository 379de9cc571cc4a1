"""Test configuration: Pyro validation on, a clean parameter store and fixed seeds for every test; Ctrl-C as an
interactive shell delivers it; and a per-session configuration directory (XDG_CONFIG_HOME), so that the plugins
tests load are never remembered in the user's own."""

from __future__ import annotations

import signal

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
def _interactive_sigint():
    """A test runner started in the background of a shell without job control (``cmd &``) inherits SIGINT ignored,
    and training rightly leaves an ignored signal ignored (as under nohup). The tests send Ctrl-C as a terminal
    would, so give them Python's usual handler, and put back what was there."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


def interactive_signals() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the child starts with SIGINT at its default, so Python installs its
    Ctrl-C handler there even when this runner inherited SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _config_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "config-home"))
