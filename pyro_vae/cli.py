"""The ``pyro-vae`` command line: one subcommand per module in ``pyro_vae.commands``.

Every user-facing error (ValueError, TypeError, OSError such as FileNotFoundError, and argparse's own
errors: an unknown option, ``--epochs abc``) becomes one line on stderr, ``pyro-vae: error: <message>``,
and exit code 2; never a traceback; a mistyped command, choice or option gets a "did you mean". Ctrl-C exits
with code 130 and a one-line message (SIGTERM during training: 143), after training saved its checkpoint.

``--plugin MODULE_OR_FILE.py`` (any number, on every command) is imported before the parser is built, so the
components it registers are choices and their options are flags (``pyro_vae.plugins``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from pyro_vae import __version__
from pyro_vae.commands import COMMANDS
from pyro_vae.errors import DataWarning, UserError
from pyro_vae.named import did_you_mean
from pyro_vae.plugins import load_plugin

#: Torch CPU threads of every command unless --threads says otherwise (TrainConfig.threads, docs/performance.md).
THREADS = 1
THREADS_HELP = "torch CPU threads (default: 1, the fastest for these models and the steadiest on a busy machine)"
PLUGIN_HELP = (
    "import this module, or this .py file, first: the priors, likelihoods, networks, guides and estimators it "
    "registers become choices (repeat for several)"
)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``pyro-vae: error: <message>; see '<prog> --help'``
    (argparse prints the whole usage first), with a "did you mean" for a mistyped choice (a command too) or
    option; its subparsers are OneLineParsers too."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (--[\w-]+)", message)
        if unknown:
            message += did_you_mean(unknown.group(1), sorted(_option_strings(self)))
        see = f" (see '{self.prog} --help')" if message.endswith("?") else f"; see '{self.prog} --help'"
        self.exit(2, f"pyro-vae: error: {message}{see}\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        # argparse's own check, with the choices listed plainly and the closest one suggested.
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            hint = did_you_mean(str(value), choices)
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{hint} (choose from {', '.join(choices)})")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every --option of ``parser`` and of its subcommands."""
    found = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pyro-vae",
        description="Variational autoencoders as Pyro model/guide pairs: train, evaluate, plot, compare estimators.",
        epilog="pyro-vae COMMAND --help lists the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    parser.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE.py", help=PLUGIN_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command_parser = command.add_parser(sub, name)
        command_parser.add_argument(
            "--plugin", action="append", dest="command_plugins", metavar="MODULE_OR_FILE.py", help=PLUGIN_HELP
        )
        if "--threads" not in _option_strings(command_parser):  # one rule for every command (TrainConfig.threads)
            command_parser.add_argument("--threads", type=int, default=THREADS, metavar="INT", help=THREADS_HELP)
    return parser


def plugin_arguments(argv: Sequence[str]) -> list[str]:
    """The values of every ``--plugin X`` / ``--plugin=X`` in ``argv`` (read before the parser exists)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.partition("=")[2])
    return found


_show_python_warning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A ``DataWarning`` as one line, as errors are; any other warning as Python shows it."""
    if issubclass(category, DataWarning):
        print(f"pyro-vae: warning: {message}", file=sys.stderr)
    else:
        _show_python_warning(message, category, *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vae ARGS``; return the exit code (0 success, 2 bad input, 130 Ctrl-C, 141 output pipe closed,
    143 SIGTERM)."""
    with warnings.catch_warnings():  # the one-line warnings for this command only
        warnings.showwarning = _show_warning
        return _main(sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    # Pyro logs INFO lines such as "Guessed max_plate_nesting = 1" to stderr; the commands say what matters.
    logging.getLogger("pyro").setLevel(logging.WARNING)
    try:
        for spec in plugin_arguments(argv):
            load_plugin(spec)
        parser = make_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help (0) or a parse error (2, already printed)
            return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
        threads = getattr(args, "threads", THREADS)
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # The reader went away (``pyro-vae presets | head``): stop quietly, as Unix tools do, and keep Python from
        # reporting the same error again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)
    except (UserError, ValueError, TypeError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _say(f"pyro-vae: error: {message}")
        return 2
    except KeyboardInterrupt as err:
        # TrainingInterrupted says where the run was saved, and which signal stopped it (SIGTERM: 143).
        _say(f"pyro-vae: {str(err).strip() or 'interrupted'}")
        return 128 + getattr(err, "signum", signal.SIGINT)


def _say(line: str) -> None:
    """One line to stderr in one write: print() writes the text and its newline separately, which unbuffered
    (PYTHONUNBUFFERED, python -u) sends as two writes, so the lines of torchrun's ranks could run into each other."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
