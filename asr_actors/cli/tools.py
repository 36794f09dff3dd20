"""The measuring tools: `conformance` (an engine worker against the engine protocol) and `bench`."""

from __future__ import annotations

import argparse
import sys

import trio

from asr_actors import client


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conformance = commands.add_parser(
        "conformance", help="check an engine worker against the engine protocol"
    )
    conformance.add_argument("--engine", required=True, help="the engine name the worker serves")
    conformance.add_argument("--redis", required=True, help="redis://host:port/db the worker uses")
    conformance.add_argument("--audio", help="speech to use (any audio file); default: synthetic tone bursts")
    conformance.add_argument("--language", default="en", help="the language the sessions ask for")

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


async def conformance(args: argparse.Namespace) -> int:
    from asr_actors.tools import conformance

    speech = await trio.to_thread.run_sync(client.load_audio, args.audio) if args.audio else None
    outcomes = await conformance.run(args.engine, args.redis, speech, language=args.language)
    for outcome in outcomes:
        print(f"{'PASS' if outcome.passed else 'FAIL'}  {outcome.case:<20} {outcome.reason}", flush=True)
    passed = sum(outcome.passed for outcome in outcomes)
    print(f"conformance: {passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) else 1


async def bench(args: argparse.Namespace) -> int:
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
