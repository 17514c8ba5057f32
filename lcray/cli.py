"""The `lcray` command. Each subcommand is a module with `add_arguments(parser)` and
`run(args) -> exit code`; adding one = import it and add a line to SUBCOMMANDS.
Subcommand modules must stay cheap to import (heavy imports inside `run`) so `lcray --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lcray import doctor
from lcray.eval import runner as eval_runner

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

# name -> (add_arguments, run); run's docstring first line is the help text.
SUBCOMMANDS: dict[str, tuple[AddArguments, Run]] = {
    "doctor": (doctor.add_arguments, doctor.run),
    "eval": (eval_runner.add_arguments, eval_runner.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcray", description="Long-context preference optimization on Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        summary = (run.__doc__ or "").strip().split("\n")[0] or None
        p = sub.add_parser(name, help=summary, description=summary)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:  # bare `lcray`: show what exists
        parser.print_help()
        return 2
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
