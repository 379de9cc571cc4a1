"""The ``pyro-vae`` command line: one subcommand per module in ``pyro_vae.commands``.

Every user-facing error (ValueError, TypeError, OSError such as FileNotFoundError, and argparse's own
errors: an unknown option, ``--epochs abc``) becomes one line on stderr, ``pyro-vae: error: <message>``,
and exit code 2; never a traceback. Ctrl-C exits with code 130 and a one-line message (SIGTERM during
training: 143), after training saved its checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from pyro_vae.commands import COMMANDS
from pyro_vae.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``pyro-vae: error: <message>; see '<prog> --help'``
    (argparse prints the whole usage first); its subparsers are OneLineParsers too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pyro-vae: error: {message}; see '{self.prog} --help'\n")


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-vae ARGS``; return the exit code (0 success, 2 bad input, 130 Ctrl-C, 143 SIGTERM)."""
    try:
        parser = make_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help (0) or a parse error (2, already printed)
            return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
        return int(args.run(args) or 0)
    except (UserError, ValueError, TypeError, OSError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"pyro-vae: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # TrainingInterrupted says where the run was saved, and which signal stopped it (SIGTERM: 143).
        print(f"pyro-vae: {str(err).strip() or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
