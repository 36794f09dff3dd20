"""The `asr-actors` command (also `python -m asr_actors`): the gateway, the engine worker, and the tools
around them: signed links, transcription of a file, apps and routes, records, the conformance suite and
the benchmark. `asr-actors --help` lists them."""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import secrets
import sys
import time
import traceback
from collections.abc import Callable

import attrs
import trio

from asr_actors import __version__, client, logs, transcripts, usage_errors
from asr_actors.config import ConfigError, load_config
from asr_actors.records import SessionRecord, TrafficRow

SECRET_ENV = "ASR_ACTORS_SECRET"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def _add_conformance(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conformance = commands.add_parser(
        "conformance", help="check an engine worker against the engine protocol"
    )
    conformance.add_argument("--engine", required=True, help="the engine name the worker serves")
    conformance.add_argument("--redis", required=True, help="redis://host:port/db the worker uses")
    conformance.add_argument("--audio", help="speech to use (any audio file); default: synthetic tone bursts")
    conformance.add_argument("--language", default="en", help="the language the sessions ask for")


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench", help="measure streams, latency, CPU and memory of the gateway (synthetic engine)"
    )
    bench.add_argument("--streams", type=int, default=100, help="concurrent real-time clients")
    bench.add_argument("--duration", type=float, default=30, help="seconds of audio each client sends")
    bench.add_argument(
        "--bus",
        default="memory",
        help="memory, redis, or memory,redis to measure both side by side in one run",
    )
    bench.add_argument("--gateways", type=int, default=1, help="gateway processes (serve --workers)")
    bench.add_argument("--engine-workers", type=int, default=1, help="synthetic worker processes (Redis bus)")
    bench.add_argument("--load-processes", type=int, default=1, help="client processes generating the load")
    bench.add_argument(
        "--session-seconds",
        type=float,
        default=0,
        help="each client starts a new session this often (0: one session per client for --duration)",
    )
    bench.add_argument(
        "--start-within",
        type=float,
        default=0,
        help="seconds over which the sessions start, e.g. 1 for a burst of N sessions in one second "
        "(default: one frame period)",
    )
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="also run the workload against the reference relay (asyncio websockets)",
    )
    bench.add_argument(
        "--sweep", help="comma-separated stream counts to run one after another (instead of --streams)"
    )
    bench.add_argument(
        "--dashscope",
        metavar="TRANSPORTS",
        help="measure the dashscope engine instead, against a fake upstream: comma-separated transports "
        "(sdk,native), each run side by side (docs/performance.md)",
    )
    bench.add_argument(
        "--upstream-pings",
        action="store_true",
        help="with --dashscope: the fake upstream pings every client each second and every millisecond "
        "while it closes",
    )
    bench.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    bench.add_argument("--plot", metavar="FILE", help="write a PNG of p99 latency and CPU against streams")


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser("worker", help="run engine sessions for gateways, through Redis ([bus] url)")
    worker.add_argument(
        "--engine", required=True, help="the engine this worker runs, e.g. local or dashscope"
    )
    worker.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )
    worker.add_argument("--concurrency", type=int, default=4, help="sessions run at once")
    worker.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz here ([worker] metrics_port)"
    )
    _add_logging(worker)


def _add_logging(command: argparse.ArgumentParser) -> None:
    command.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    command.add_argument(
        "--log-format", default="text", choices=logs.FORMATS, help="json: one JSON object per line"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-actors", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the gateway (page, /healthz and the WebSocket on one port)"
    )
    serve.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )
    serve.add_argument("--host", help="address to bind (overrides [server] host)")
    serve.add_argument("--port", type=int, help="port to bind, 0 for any free port (overrides [server] port)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="also serve /metrics, /healthz and /readyz on this port (overrides [server] metrics_port)",
    )
    serve.add_argument(
        "--compat-bailian",
        type=int,
        metavar="PORT",
        help="also speak the Bailian web demo's protocol on ws://127.0.0.1:PORT/ (loopback only)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (SO_REUSEPORT), to use a host's cores; needs the Redis bus",
    )
    serve.add_argument(
        "--reuse-port", action="store_true", help="share the port with other processes (set by --workers)"
    )
    _add_logging(serve)

    _add_worker(commands)

    records = commands.add_parser("records", help="print traffic per app and day, or session transcripts")
    records.add_argument("kind", choices=["traffic", "transcripts"])
    records.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )
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
    apps.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )
    apps.add_argument(
        "--secret-stdin", action="store_true", help="read the secret from stdin instead of making one"
    )

    routes = commands.add_parser("routes", help="list or change language routes (live on the Redis bus)")
    routes.add_argument("action", choices=["list", "set", "remove"])
    routes.add_argument("language", nargs="?")
    routes.add_argument("engine", nargs="?")
    routes.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )

    _add_conformance(commands)
    _add_bench(commands)

    sign = commands.add_parser("sign", help="print a signed, single-use WebSocket URL")
    sign.add_argument("--appkey", required=True)
    sign.add_argument(
        "--secret", help=f"the app's secret (default: ${SECRET_ENV}, which keeps it out of history)"
    )
    sign.add_argument("--url", default="ws://127.0.0.1:8000/v1/asr")
    sign.add_argument(
        "--nonce", action="store_true", help="add a nonce, so several links per second stay distinct"
    )

    transcribe = commands.add_parser(
        "transcribe", help="stream an audio file and print what the server hears"
    )
    transcribe.add_argument("file")
    transcribe.add_argument("--url", default="ws://127.0.0.1:8000/v1/asr")
    transcribe.add_argument(
        "--appkey", help="with --secret: sign the link here; without: ask the server's /v1/sign"
    )
    transcribe.add_argument("--secret", help=f"the app's secret (default: ${SECRET_ENV})")
    transcribe.add_argument("--lang", help="language code, e.g. en")
    transcribe.add_argument(
        "--format",
        choices=transcripts.FORMATS,
        default="txt",
        help="txt (a line per sentence, shown as it comes), json (sentences and word times), srt or vtt",
    )
    transcribe.add_argument(
        "--realtime", action="store_true", help="send at the audio's own pace, like a microphone"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands_by_name: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": _serve,
        "worker": _worker,
        "sign": _sign,
        "records": lambda arguments: trio.run(_records, arguments),
        "conformance": lambda arguments: trio.run(_conformance, arguments),
        "apps": lambda arguments: trio.run(_apps, arguments),
        "routes": lambda arguments: trio.run(_routes, arguments),
        "transcribe": lambda arguments: trio.run(_transcribe, arguments),
        "bench": lambda arguments: trio.run(_bench, arguments),
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


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    config = load_config(args.config)
    server = config.server
    server = attrs.evolve(
        server,
        host=server.host if args.host is None else args.host,
        port=server.port if args.port is None else args.port,
        reuse_port=server.reuse_port or args.reuse_port,
        metrics_port=server.metrics_port if args.metrics_port is None else args.metrics_port,
    )
    config = attrs.evolve(config, server=server)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1:
        if args.compat_bailian is not None:
            raise ConfigError("--compat-bailian serves from one process: leave out --workers")
        from asr_actors.prefork import serve_processes

        child_arguments = ["--log-level", args.log_level, "--log-format", args.log_format]
        if args.config:
            child_arguments += ["--config", args.config]
        return trio.run(serve_processes, config, args.workers, child_arguments)

    async def run() -> None:
        from asr_actors.server import serve

        async with trio.open_nursery() as nursery:
            listening = await nursery.start(
                functools.partial(serve, config, bailian_port=args.compat_bailian, drain_on_signal=True)
            )
            print(f"asr-actors is listening: open {listening.url}", flush=True)
            if listening.bailian_url:
                print(f"Bailian demo protocol on {listening.bailian_url}", flush=True)

    trio.run(run)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from asr_actors.worker import serve_worker

    logs.configure(args.log_level, args.log_format)
    config = load_config(args.config)
    if args.metrics_port is not None:
        config = attrs.evolve(config, worker=attrs.evolve(config.worker, metrics_port=args.metrics_port))
    trio.run(serve_worker, config, args.engine, args.concurrency)
    return 0


async def _apps(args: argparse.Namespace) -> int:
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
            change = chosen.admin.add_app if args.action == "add" else chosen.admin.rotate_app
            await change(appkey, secret)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
    # Shown once; links signed with the old secret of a rotated app stop working, live sessions go on.
    print(f"{appkey} {secret}")
    return 0


async def _routes(args: argparse.Namespace) -> int:
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


async def _conformance(args: argparse.Namespace) -> int:
    from asr_actors.tools import conformance

    speech = await trio.to_thread.run_sync(client.load_audio, args.audio) if args.audio else None
    outcomes = await conformance.run(args.engine, args.redis, speech, language=args.language)
    for outcome in outcomes:
        print(f"{'PASS' if outcome.passed else 'FAIL'}  {outcome.case:<20} {outcome.reason}", flush=True)
    passed = sum(outcome.passed for outcome in outcomes)
    print(f"conformance: {passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) else 1


async def _records(args: argparse.Namespace) -> int:
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
            _print_traffic(await chosen.records.traffic(app=args.app, since=since), as_json=args.json)
            return 0
        records = [
            record
            for record in await chosen.records.transcripts(app=args.app, since=since)
            if args.session is None or record.session == args.session
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
    _print_transcripts(records, as_json=args.json)
    return 0


def _print_traffic(rows: list[TrafficRow], *, as_json: bool) -> None:
    import json

    if as_json:
        for row in rows:
            print(json.dumps(attrs.asdict(row)))
        return
    print(f"{'day':<10}  {'app':<20} {'sessions':>8} {'audio s':>10} {'bytes':>12} {'errors':>6}")
    for row in rows:
        print(
            f"{row.day:<10}  {row.app:<20} {row.sessions:>8} {row.audio_seconds:>10.1f}"
            f" {row.audio_bytes:>12} {row.errors:>6}"
        )


def _print_transcripts(records: list[SessionRecord], *, as_json: bool) -> None:
    for record in records:
        if as_json:
            print(record.to_json())
            continue
        started = datetime.datetime.fromtimestamp(record.started_at, datetime.UTC).isoformat(
            timespec="seconds"
        )
        outcome = f"error {record.error_code}" if record.error_code else "ok"
        print(
            f"{started}  {record.session}  app={record.app} lang={record.language} engine={record.engine}"
            f" audio={record.audio_seconds:.1f}s {outcome}"
        )
        for final in record.finals:
            print(f"    [{final.begin_ms / 1000:7.2f}-{final.end_ms / 1000:7.2f}] {final.text}")


def _secret(args: argparse.Namespace) -> str | None:
    secret: str | None = args.secret or os.environ.get(SECRET_ENV)
    return secret


def _sign(args: argparse.Namespace) -> int:
    secret = _secret(args)
    if not secret:
        print(f"sign needs --secret or ${SECRET_ENV}", file=sys.stderr)
        return 2
    nonce = client.fresh_nonce() if args.nonce else None
    print(client.sign_url(args.url, args.appkey, secret, time.time(), nonce))
    return 0


async def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asr_actors.tools.benchmark import report
    from asr_actors.tools.benchmark.run import Measurement, System, Workload, measure

    try:
        counts = [int(count) for count in args.sweep.split(",")] if args.sweep else [args.streams]
    except ValueError:
        print(f"--sweep takes stream counts like 100,500,1000, not {args.sweep!r}", file=sys.stderr)
        return 2
    if args.dashscope:
        return await _bench_dashscope(args, counts)
    buses = args.bus.split(",")
    if not buses or any(bus not in ("memory", "redis") for bus in buses):
        print(f"--bus takes memory, redis or memory,redis, not {args.bus!r}", file=sys.stderr)
        return 2
    if args.gateways > 1 and "memory" in buses:
        print("--gateways above 1 needs --bus redis (serve --workers does)", file=sys.stderr)
        return 2
    ours = [System("asr-actors", bus, args.gateways, args.engine_workers) for bus in buses]
    systems = [*ours, System("reference")] if args.baseline else ours

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    measurements: list[Measurement] = []
    for count in counts:
        workload = Workload(
            count, args.duration, args.load_processes, args.session_seconds, start_within=args.start_within
        )
        for system in systems:
            measurements.append(await measure(system, workload, progress))
            if args.json:
                report.write_json(Path(args.json), measurements)
    print(report.table(measurements))
    if args.baseline:
        for count in counts:
            pair = [m for m in measurements if m.streams == count]
            ratios = report.ratios(pair[0], pair[-1])
            shown = ", ".join(f"{name} {value:g}" for name, value in ratios.items())
            print(f"\n{count} streams, asr-actors ÷ reference: {shown}")
    if args.plot:
        report.plot(Path(args.plot), measurements)
        print(f"\nplot written to {args.plot}")
    return 0


async def _bench_dashscope(args: argparse.Namespace, counts: list[int]) -> int:
    from pathlib import Path

    from asr_actors.tools.benchmark import dashscope

    transports = args.dashscope.split(",")
    if not set(transports) <= {"sdk", "native"}:
        print(f"--dashscope takes sdk, native or both, not {args.dashscope!r}", file=sys.stderr)
        return 2
    measurements: list[dashscope.DashScopeMeasurement] = []
    for count in counts:
        for transport in transports:
            measurements.append(
                await dashscope.measure_dashscope(
                    transport,
                    count,
                    args.duration,
                    lambda line: print(line, file=sys.stderr, flush=True),
                    upstream_pings=args.upstream_pings,
                )
            )
            if args.json:
                dashscope.write_json(Path(args.json), measurements)
    print(dashscope.table(measurements))
    return 0


async def _transcribe(args: argparse.Namespace) -> int:
    secret = _secret(args)
    if args.appkey and secret:
        url = client.sign_url(args.url, args.appkey, secret, time.time(), client.fresh_nonce())
    else:
        http_url = (
            args.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).split("/v1/")[0] + "/"
        )
        url = await client.fetch_demo_url(http_url)
    if args.lang:
        url += f"&lang={args.lang}"
    pcm = await trio.to_thread.run_sync(client.load_audio, args.file)
    # Plain text is shown as it comes; the other formats are printed whole at the end.
    view = _TerminalView(sys.stdout.isatty() and args.format == "txt", len(pcm) / 32000, args.format == "txt")
    results = await client.stream_pcm(
        url, pcm, realtime=args.realtime, on_result=view.result, on_progress=view.progress
    )
    view.done()
    if args.format != "txt":
        sentences = [
            transcripts.from_milliseconds(r.text, r.begin_ms, r.end_ms, r.words)
            for r in results
            if r.status == "final"
        ]
        sys.stdout.write(transcripts.render(sentences, args.format))
    return 0


class _TerminalView:
    """Partials overwrite one line (with progress); each final gets its own line."""

    def __init__(self, interactive: bool, seconds: float, show_finals: bool = True) -> None:
        self._interactive = interactive
        self._show_finals = show_finals
        self._seconds = seconds
        self._fraction = 0.0
        self._partial = ""
        self._reported_tenth = -1

    def progress(self, fraction: float) -> None:
        self._fraction = fraction
        if self._interactive:
            self._redraw()
        elif int(fraction * 10) != self._reported_tenth:
            self._reported_tenth = int(fraction * 10)
            print(f"sent {fraction:.0%} of {self._seconds:.1f} s", file=sys.stderr, flush=True)

    def result(self, received: client.Received) -> None:
        if received.status == "partial":
            self._partial = received.text
            if self._interactive:
                self._redraw()
        elif received.status == "final" and self._show_finals:
            self._partial = ""
            if self._interactive:
                sys.stdout.write("\r\x1b[K")
            print(received.text, flush=True)
            if self._interactive:
                self._redraw()

    def _redraw(self) -> None:
        sys.stdout.write(f"\r\x1b[K[{self._fraction:4.0%}] {self._partial}")
        sys.stdout.flush()

    def done(self) -> None:
        if self._interactive:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
