"""``circuitsim``: the command line, above every layer.

With ``--json`` every subcommand prints exactly one JSON object as the last line of stdout,
an error too; logs and progress go to stderr. The keys named in the project's issues are a
contract. Bad input exits with status 2, Ctrl-C with 130; heavy layers are imported inside
the subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from cli.parser import UsageError, build_parser
from netlists.errors import CircuitSimError, ConfigError

#: What an interrupted command kept, by subcommand (a KeyboardInterrupt that carries its
#: own message, such as training's, says it instead).
_INTERRUPTED = {
    "calibrate": "the ngspice jobs already finished are kept (a .parts folder beside the "
                 "table); run the same command again to resume from them",
    "demo": "the calibration's finished ngspice jobs are kept; run the demo again to resume",
    "train": "no epoch had finished, so no checkpoint was written",
    "sweep": "the finished runs and the others' last epochs are kept in --out; run the "
             "same command with --resume to continue",
}


_INTERNAL = ("func", "fields", "command_name")


def _option_for(args: argparse.Namespace, field: str | None) -> str | None:
    """The command-line option behind ``field`` (an argument or configuration field)."""
    if field is None or field.startswith("-"):
        return field
    mapped = getattr(args, "fields", {}).get(field)
    if mapped:
        return mapped
    dest = field.replace("-", "_")
    if dest in vars(args) and dest not in _INTERNAL:
        return "--" + dest.replace("_", "-")
    if "." in field and getattr(args, "config", None) is not None:
        return "--config"  # a field of the TOML file
    return None


def _fail(message: str, *, kind: str, field: str | None, option: str | None, status: int,
          as_json: bool) -> int:
    """Say what went wrong: one line on stderr, and with --json one JSON object on stdout
    (``field``: the argument or configuration field, ``option``: the option that set it)."""
    print(f"circuitsim: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "kind": kind, "field": field, "option": option,
                          "status": status}))
    return status


def _error_text(err: CircuitSimError, option: str | None, args: argparse.Namespace) -> str:
    label = "configuration error" if isinstance(err, ConfigError) else "error"
    text = str(err)
    if option == "--config" and str(args.config) not in text:
        text = f"--config {args.config}: {text}"
    elif option and option not in text:
        text = f"{option}: {text}"
    return f"{label}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(f"usage error: {err}", kind="UsageError", field=err.field,
                     option=err.field, status=2, as_json=as_json)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.func(args)
    except KeyboardInterrupt as err:
        said = str(err)  # training's TrainingInterrupted says what its checkpoint holds
        if not said.startswith("interrupted"):
            said = "interrupted: " + (said or _INTERRUPTED.get(args.command_name,
                                                              "nothing was written"))
        return _fail(said, kind="Interrupted", field=None, option=None, status=130,
                     as_json=as_json)
    except CircuitSimError as err:
        option = _option_for(args, err.field)
        return _fail(_error_text(err, option, args), kind=type(err).__name__,
                     field=err.field or option, option=option, status=2, as_json=as_json)
    except OSError as err:  # a file system error that no earlier check could foresee
        where = f" {err.filename!r}" if err.filename else ""
        return _fail(f"error: cannot read or write{where}: {err.strerror or err}",
                     kind="OutputError", field=None, option=None, status=2,
                     as_json=as_json)
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
