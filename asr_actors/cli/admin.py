"""The administration commands: `apps` and `routes` (the directory), `records` (traffic and transcripts)."""

from __future__ import annotations

import argparse
import datetime
import re
import secrets
import sys

from asr_actors import transcripts
from asr_actors.cli import output
from asr_actors.cli.common import add_config
from asr_actors.config import load_config

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    records = commands.add_parser("records", help="print traffic per app and day, or session transcripts")
    records.add_argument("kind", choices=["traffic", "transcripts"])
    add_config(records)
    records.add_argument("--app", help="only this app")
    records.add_argument("--since", help="only sessions started on or after this day (YYYY-MM-DD, UTC)")
    records.add_argument("--json", action="store_true", help="one JSON object per line")
    records.add_argument("--session", help="transcripts: only this session")
    records.add_argument(
        "--format",
        choices=transcripts.FORMATS,
        help="transcripts: one session's transcript as txt, json, srt or vtt (needs --session)",
    )

    apps = commands.add_parser(
        "apps", help="list, add, rotate or remove apps (Redis on the Redis bus, else the apps file)"
    )
    apps.add_argument("action", choices=["list", "add", "rotate", "remove"])
    apps.add_argument("appkey", nargs="?")
    add_config(apps)
    apps.add_argument(
        "--secret-stdin", action="store_true", help="read the secret from stdin instead of making one"
    )
    apps.add_argument(
        "--api-key",
        action="store_true",
        help="add or rotate the app's API key for the OpenAI-compatible API (printed once; only its "
        "SHA-256 is kept) instead of its secret",
    )

    routes = commands.add_parser("routes", help="list or change language routes (live on the Redis bus)")
    routes.add_argument("action", choices=["list", "set", "remove"])
    routes.add_argument("language", nargs="?")
    routes.add_argument("engine", nargs="?")
    add_config(routes)


async def apps(args: argparse.Namespace) -> int:
    from asr_actors.backend import backend
    from asr_actors.directory import check_appkey

    config = load_config(args.config)
    async with backend(config) as chosen:
        assert chosen.admin is not None
        if args.action == "list":
            for appkey in await chosen.admin.list_apps():
                print(appkey)
            return 0
        if not args.appkey:
            print(f"apps {args.action} needs an app key", file=sys.stderr)
            return 2
        try:
            appkey = check_appkey(args.appkey)
            if args.action == "remove":
                await chosen.admin.remove_app(appkey)
                print(f"removed {appkey}")
                return 0
            secret = sys.stdin.readline().strip() if args.secret_stdin else secrets.token_urlsafe(32)
            if len(secret) < 16:
                raise ValueError("a secret needs at least 16 characters")
            if args.api_key:
                from asr_actors.openai_api.keys import digest

                secret = f"sk-{secret}" if not args.secret_stdin else secret
                await chosen.admin.set_api_key(appkey, digest(secret), new_app=args.action == "add")
            else:
                change = chosen.admin.add_app if args.action == "add" else chosen.admin.rotate_app
                await change(appkey, secret)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
    # Shown once; links signed with the old secret of a rotated app (or calls with its old API key) stop
    # working, live sessions go on. An API key added to the apps file counts once the gateway restarts;
    # on the Redis bus at once.
    print(f"{appkey} {secret}")
    return 0


async def routes(args: argparse.Namespace) -> int:
    from asr_actors.backend import backend
    from asr_actors.config import engine_name_ok

    config = load_config(args.config)
    async with backend(config) as chosen:
        assert chosen.admin is not None
        try:
            if args.action == "set":
                if not args.language or not engine_name_ok(args.engine or "", config.bus.kind):
                    raise ValueError(f"routes set LANGUAGE ENGINE: {args.engine!r} is not an engine name")
                if not LANGUAGE_CODE.match(args.language):
                    raise ValueError(f"not a language code: {args.language!r}")
                await chosen.admin.set_route(args.language, args.engine)
            elif args.action == "remove":
                await chosen.admin.remove_route(args.language or "")
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
        for language, engine in sorted((await chosen.admin.routes()).items()):
            print(f"{language} {engine}")
    return 0


async def records(args: argparse.Namespace) -> int:
    from asr_actors.backend import backend

    config = load_config(args.config)
    since = 0.0
    if args.since:
        try:
            since = (
                datetime.datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=datetime.UTC).timestamp()
            )
        except ValueError:
            print(f"--since must be YYYY-MM-DD, not {args.since!r}", file=sys.stderr)
            return 2
    # Engines are built but not prepared: no model is loaded for this.
    async with backend(config) as chosen:
        if chosen.records is None:
            print("records are disabled ([records] enabled = false)", file=sys.stderr)
            return 2
        if args.kind == "traffic":
            output.print_traffic(await chosen.records.traffic(app=args.app, since=since), as_json=args.json)
            return 0
        records = [
            record
            for record in await chosen.records.transcripts(app=args.app, since=since)
            if args.session is None or record.session_id == args.session
        ]
    if args.format:
        if args.session is None or not records:
            print("--format needs --session with a kept session's id", file=sys.stderr)
            return 2
        sentences = [
            transcripts.from_milliseconds(final.text, final.begin_ms, final.end_ms, final.words)
            for final in records[0].finals
        ]
        sys.stdout.write(transcripts.render(sentences, args.format))
        return 0
    output.print_transcripts(records, as_json=args.json)
    return 0
