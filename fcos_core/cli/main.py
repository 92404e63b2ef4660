"""``fcos``: the entry point. Subcommands come from the ``register_commands`` hook.

A user mistake (:class:`~fcos_core.errors.FcosUserError`) exits with code 2 and a short message
naming the cause and the fix; ``--debug`` adds the traceback. Ctrl-C exits with code 130;
SIGTERM during ``fcos run`` (which saves a checkpoint first) with 143.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

import fcos_core
from fcos_core.errors import FcosUserError

EXIT_USER_ERROR = 2


def build_parser(host) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcos",
        description="Train, quantize and deploy FCOS detectors. Components and commands come "
        "from plugins; see `fcos plugins`.",
    )
    parser.add_argument("--version", action="version", version=f"fcos {fcos_core.__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks for errors (also FCOS_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in host.registries["commands"]:
        p = sub.add_parser(entry.name, help=entry.doc, description=entry.doc)
        add_arguments = entry.extra.get("add_arguments")
        if add_arguments is not None:
            add_arguments(p)
        p.set_defaults(_entry=entry)
    return parser


def main(argv: Sequence[str] | None = None, host=None) -> int:
    """Run the CLI; ``host`` (a PluginHost) replaces plugin discovery in tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FCOS_DEBUG", "") not in ("", "0")
    try:
        from fcos_core.plugins import load_host

        if host is None:
            host = load_host()
        parser = build_parser(host)
        args, extra = parser.parse_known_args(argv)
        # `fcos run CFG --stage float a.b=1`: overrides may follow options
        overrides = [x for x in extra if "=" in x and not x.startswith("-")]
        if overrides and isinstance(getattr(args, "overrides", None), list):
            args.overrides.extend(overrides)
            extra = [x for x in extra if x not in overrides]
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "_entry", None) is None:
            parser.print_help()
            for line in host.failure_report():
                print(f"warning: {line}", file=sys.stderr)
            return 0
        run = args._entry.load()
        return int(run(args, host) or 0)
    except FcosUserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM during `fcos run`: 143
        name = getattr(exc, "signal_name", None)
        print(
            f"terminated ({name}); continue from the last saved checkpoint with --resume"
            if name
            else "interrupted",
            file=sys.stderr,
        )
        return int(getattr(exc, "exit_code", 130))
    except BrokenPipeError:  # `fcos plugins | head`
        return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
