"""The long-running commands: `serve` (the gateway) and `worker` (an engine worker on the Redis bus)."""

from __future__ import annotations

import argparse
import functools

import attrs
import trio

from asr_actors import logs
from asr_actors.cli.common import add_config, add_logging
from asr_actors.config import ConfigError, load_config


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="run the gateway (page, /healthz and the WebSocket on one port)"
    )
    add_config(serve)
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
    add_logging(serve)

    worker = commands.add_parser("worker", help="run engine sessions for gateways, through Redis ([bus] url)")
    worker.add_argument(
        "--engine", required=True, help="the engine this worker runs, e.g. local or dashscope"
    )
    add_config(worker)
    worker.add_argument("--concurrency", type=int, default=4, help="sessions run at once")
    worker.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz here ([worker] metrics_port)"
    )
    add_logging(worker)


def serve(args: argparse.Namespace) -> int:
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


def worker(args: argparse.Namespace) -> int:
    from asr_actors.worker import serve_worker

    logs.configure(args.log_level, args.log_format)
    config = load_config(args.config)
    if args.metrics_port is not None:
        config = attrs.evolve(config, worker=attrs.evolve(config.worker, metrics_port=args.metrics_port))
    trio.run(serve_worker, config, args.engine, args.concurrency)
    return 0
