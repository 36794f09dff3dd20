"""The `asr-actors` command (also `python -m asr_actors`): the gateway, the engine worker, and the tools
around them: signed links, transcription of a file, apps and routes, records, the conformance suite and
the benchmark. `asr-actors --help` lists them.

A module per group of commands (`servers`, `admin`, `clients`, `tools`), each adding its parsers and
running its commands; `output` prints; `asr_actors.usage_errors` turns a user's mistake into one line.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

import trio

from asr_actors import __version__, client, usage_errors
from asr_actors.cli import admin, clients, servers, tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-actors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (servers, admin, tools, clients):
        group.add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands_by_name: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": servers.serve,
        "worker": servers.worker,
        "sign": clients.sign,
        "records": lambda arguments: trio.run(admin.records, arguments),
        "conformance": lambda arguments: trio.run(tools.conformance, arguments),
        "apps": lambda arguments: trio.run(admin.apps, arguments),
        "routes": lambda arguments: trio.run(admin.routes, arguments),
        "transcribe": lambda arguments: trio.run(clients.transcribe, arguments),
        "bench": lambda arguments: trio.run(tools.bench, arguments),
    }
    try:
        return commands_by_name[args.command](args)
    except client.ServerError as exc:
        print(f"\nserver error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        problem = usage_errors.explain(exc, args.command)
        if problem is None:
            raise  # a bug: its traceback is what a report needs
        if getattr(args, "log_level", "").upper() == "DEBUG":
            traceback.print_exception(exc)
        print(f"asr-actors {args.command}: {problem.message}", file=sys.stderr)
        return problem.exit_code
