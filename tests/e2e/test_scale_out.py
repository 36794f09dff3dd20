"""Scale-out for real: a redis-server, two gateway processes and two engine worker processes.

The workers run the scripted fake engine (one word per 100 ms of audio, a sentence per second), so the
finals say exactly which audio arrived. Prints the measured placement latency and failover time.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import coredis
import pytest
import trio

from asr_actors import client
from asr_actors.engine_protocol import wire
from asr_actors.testing.redis_server import RedisServer, free_port, redis_server
from asr_actors.testing.subprocess_server import running_server, stop
from tests.test_http import http_get

GUARD = 120
# The fault tests run this many sessions at once (the hardening issue's figure).
LIVE_SESSIONS = 50
APPKEY, SECRET = "scale", "scale-secret"
SECOND = b"\x01\x00" * 16000


def write_config(folder: Path, redis_url: str, appkey: str = APPKEY, secret: str = SECRET) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[apps.{appkey}]\nsecret = "{secret}"\n'
        '[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n'
        f'[bus]\nkind = "redis"\nurl = "{redis_url}"\nheartbeat_interval = 0.5\nworker_ttl = 1.5\n'
        "gateway_ttl = 1.5\n"
    )
    return path


@asynccontextmanager
async def workers(
    config: Path, count: int, redis: RedisServer, concurrency: int = LIVE_SESSIONS + 14
) -> AsyncIterator[list[trio.Process]]:
    processes = [
        await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "asr_actors",
                "worker",
                "--engine",
                "fake",
                "--config",
                str(config),
                "--concurrency",
                str(concurrency),
            ],
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        await workers_announced(redis, count)
        yield processes
    finally:
        for process in processes:
            await stop(process)


async def workers_announced(redis: RedisServer, count: int) -> None:
    """Until `count` workers have set their liveness keys (started processes announce themselves)."""
    async with coredis.Redis(host="127.0.0.1", port=redis.port) as probe:
        with trio.fail_after(60):
            while len(await probe.keys(wire.worker_key("*"))) < count:  # noqa: ASYNC110 -- other processes
                await trio.sleep(0.1)


async def session_channels(redis: RedisServer) -> list[bytes]:
    """Pub/sub channels someone subscribes to other than the processes' own (inbox, canary): in protocol
    v2 a session has none, and none may be left behind."""
    async with coredis.Redis(host="127.0.0.1", port=redis.port) as probe:
        channels = await probe.pubsub_channels(f"{wire.PREFIX}*")
    own = (wire.inbox_channel("").encode(), f"{wire.PREFIX}canary:".encode())
    return sorted(channel for channel in channels if not channel.startswith(own))


async def settled_channels(redis: RedisServer) -> list[bytes]:
    with trio.move_on_after(5):
        while await session_channels(redis):  # noqa: ASYNC110 -- another process's state
            await trio.sleep(0.1)
    return await session_channels(redis)


async def claims(redis: RedisServer, sessions: list[str]) -> list[int]:
    async with coredis.Redis(host="127.0.0.1", port=redis.port) as probe:
        return [int(await probe.get(wire.claims_key(session)) or 0) for session in sessions]


def signed(http_url: str) -> str:
    ws_url = http_url.replace("http://", "ws://") + "v1/asr"
    return client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce())


def report(figures: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[scale-out] {figures}")


async def test_two_gateways_two_workers_eight_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 concurrent sessions over 2 gateways and 2 workers: exact finals, each session claimed once."""
    pcm = SECOND * 3 + SECOND[: len(SECOND) // 2]
    expected = [" ".join(f"w{k}" for k in range(start, start + 10)) for start in (0, 10, 20)]
    expected.append(" ".join(f"w{k}" for k in range(30, 35)))
    results: list[list[client.Received]] = []
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            async with (
                workers(config, 2, redis),
                running_server(config) as (first, _),
                running_server(config) as (second, _),
                trio.open_nursery() as nursery,
            ):
                for index in range(8):

                    async def one(url: str = (first, second)[index % 2]) -> None:
                        results.append(await client.stream_pcm(signed(url), pcm, realtime=True))

                    nursery.start_soon(one)
            task_ids = [session_task_id(received) for received in results]
            assert 8 == len(task_ids)
            assert [1] * 8 == await claims(redis, task_ids)
    for received in results:
        assert expected == [r.text for r in received if r.status == "final"]
    placement = [next(r.at for r in received if r.status == "start") for received in results]
    report(
        f"placement latency (first audio → start): median {statistics.median(placement) * 1000:.0f} ms, "
        f"max {max(placement) * 1000:.0f} ms",
        capsys,
    )


def session_task_id(received: list[client.Received]) -> str:
    """The task id, from the speech ids (`<task_id>-<n>`)."""
    speech_id = next(r.speech_id for r in received if r.speech_id)
    return speech_id.rsplit("-", 1)[0]


async def test_worker_killed_mid_sentence_loses_and_repeats_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 one of two workers while 50 sessions stream: every second of audio still becomes exactly one
    final (the finals tile the audio with no gap or overlap), the sessions end normally, and afterwards no
    session channel is left subscribed."""
    seconds = 6
    pcm = SECOND * seconds
    results: list[list[client.Received]] = []
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            async with workers(config, 2, redis) as processes, running_server(config) as (url, _):
                async with trio.open_nursery() as nursery:
                    for _ in range(LIVE_SESSIONS):

                        async def one() -> None:
                            results.append(await client.stream_pcm(signed(url), pcm, realtime=True))

                        nursery.start_soon(one)
                    await trio.sleep(2.45)  # mid-sentence: the third second of audio is half sent
                    os.kill(processes[0].pid, signal.SIGKILL)
                # Every session over: nothing of any session is left subscribed.
                assert [] == await settled_channels(redis)
            task_ids = [session_task_id(received) for received in results]
            claim_counts = await claims(redis, task_ids)
    assert LIVE_SESSIONS == len(results)
    assert any(count == 2 for count in claim_counts), claim_counts  # some sessions were on the killed worker
    assert all(count in (1, 2) for count in claim_counts), claim_counts
    gaps = []
    for received in results:
        finals = [(r.begin_ms, r.end_ms) for r in received if r.status == "final"]
        assert [(k * 1000, (k + 1) * 1000) for k in range(seconds)] == finals
        assert "end" == received[-1].status
        times = [r.at for r in received if r.status in ("partial", "final")]
        gaps.append(max(later - earlier for earlier, later in itertools.pairwise(times)))
    report(
        f"failover: longest pause in results {max(gaps):.2f} s (worker_ttl 1.5 s, heartbeat 0.5 s); "
        f"{claim_counts.count(2)} of {len(claim_counts)} sessions moved to the surviving worker",
        capsys,
    )


async def test_a_killed_gateways_sessions_are_freed_on_the_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 a gateway while its sessions fill every slot of the worker: the worker ends them once the
    gateway's liveness key expires (gateway_ttl 1.5 s, checked every 0.5 s), not at its 40 s audio
    timeout, so that a session on another gateway is claimed within seconds."""
    slots = 8
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            async with workers(config, 1, redis, concurrency=slots):
                async with running_server(config) as (doomed_url, doomed), trio.open_nursery() as clients:
                    for _ in range(slots):
                        clients.start_soon(
                            functools.partial(
                                client.stream_pcm, signed(doomed_url), SECOND * 60, realtime=True
                            )
                        )
                    async with coredis.Redis(host="127.0.0.1", port=redis.port) as probe:
                        with trio.fail_after(30):
                            while len(await probe.keys(wire.claims_key("*"))) < slots:  # noqa: ASYNC110 -- other processes
                                await trio.sleep(0.1)
                    os.kill(doomed.pid, signal.SIGKILL)
                    killed_at = trio.current_time()
                    clients.cancel_scope.cancel()
                async with running_server(config) as (url, _):
                    while True:
                        try:
                            after = await client.stream_pcm(signed(url), SECOND)
                            break
                        except client.ServerError as exc:  # 503 while the slots are held
                            if exc.code != 503:
                                raise
                    claimed_after = trio.current_time() - killed_at
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"] == [r.text for r in after if r.status == "final"]
    # The bound: gateway_ttl + one check interval + a claim; the audio timeout would be 40 s.
    assert claimed_after < 10, claimed_after
    report(
        f"gateway killed: its {slots} sessions freed on the worker, a new session served "
        f"{claimed_after:.1f} s after the kill (gateway_ttl 1.5 s, heartbeat 0.5 s; audio_timeout 40 s)",
        capsys,
    )


async def test_redis_restart_never_hangs_and_new_sessions_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """redis-server restarts (losing every key) while 50 sessions stream: each either completes or ends
    with a coded error, none hangs; afterwards gateway and worker have reconnected, a new session works,
    and no session channel is left subscribed."""
    pcm = SECOND * 4
    outcomes: list[str] = []
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            async with workers(config, 1, redis), running_server(config) as (url, _):
                async with trio.open_nursery() as nursery:
                    for _ in range(LIVE_SESSIONS):

                        async def one() -> None:
                            try:
                                received = await client.stream_pcm(signed(url), pcm, realtime=True)
                                outcomes.append(received[-1].status)
                            except client.ServerError as exc:
                                outcomes.append(str(exc.code))

                        nursery.start_soon(one)
                    await trio.sleep(1.5)
                    await redis.stop()
                    await redis.start()
                with trio.fail_after(30):
                    while True:
                        try:
                            after = await client.stream_pcm(signed(url), SECOND)
                            break
                        except client.ServerError as exc:  # 503 until the worker has re-registered
                            if exc.code != 503:
                                raise
                            await trio.sleep(0.5)
                assert [] == await settled_channels(redis)
    assert LIVE_SESSIONS == len(outcomes)
    assert set(outcomes) <= {"end", "500", "503"}, outcomes
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"] == [r.text for r in after if r.status == "final"]
    ended = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
    report(f"redis restart: in-flight sessions ended with {ended}; a new session then succeeded", capsys)


async def test_sigterm_drains_the_worker(tmp_path: Path) -> None:
    """SIGTERM: the worker stops claiming, its running session still gets every final, then it exits 0."""
    pcm = SECOND * 3
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            async with workers(config, 1, redis) as processes, running_server(config) as (url, _):
                results: list[client.Received] = []

                async def session() -> None:
                    results.extend(await client.stream_pcm(signed(url), pcm, realtime=True))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session)
                    await trio.sleep(1.0)
                    processes[0].terminate()
                    with pytest.raises(client.ServerError) as refused:
                        await client.stream_pcm(signed(url), SECOND)  # no new claims while draining
                assert 503 == refused.value.code
                with trio.fail_after(10):
                    assert 0 == await processes[0].wait()
    assert [(k * 1000, (k + 1) * 1000) for k in range(3)] == [
        (r.begin_ms, r.end_ms) for r in results if r.status == "final"
    ]


async def test_subscriber_cut_off_by_redis_output_buffer_limit_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that stalls (SIGSTOP) while its audio is published exceeds Redis's pub/sub output-buffer
    limit; Redis cuts its subscription and the audio in between is lost. The loss shows as a sequence gap
    and the session ends with a coded error naming it, instead of a transcript silently missing words."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            config.write_text(config.read_text().replace("worker_ttl = 1.5", "worker_ttl = 5.0"))
            async with coredis.Redis(host="127.0.0.1", port=redis.port) as admin:
                await admin.config_set({"client-output-buffer-limit": "pubsub 1kb 1kb 0"})
            failure: list[client.ServerError] = []
            async with (
                workers(config, 1, redis) as processes,
                running_server(config) as (url, _),
                trio.open_nursery() as nursery,
            ):

                async def session() -> None:
                    with pytest.raises(client.ServerError) as caught:
                        await client.stream_pcm(signed(url), SECOND * 4, realtime=True)
                    failure.append(caught.value)

                nursery.start_soon(session)
                await trio.sleep(1.0)
                processes[0].send_signal(signal.SIGSTOP)
                await trio.sleep(1.0)
                processes[0].send_signal(signal.SIGCONT)
    assert 500 == failure[0].code
    assert "sequence gap" in failure[0].message or "lost" in failure[0].message, failure[0].message
    report(f"output-buffer cut-off reported as: {failure[0].code} {failure[0].message}", capsys)


async def http_status(http_url: str, path: str) -> int:
    """What `curl` gets for `path` (an operator's health check)."""
    done = await trio.run_process(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            http_url + path.lstrip("/"),
        ],
        capture_stdout=True,
    )
    return int(done.stdout)


async def session_outcome(http_url: str) -> str:
    try:
        received = await client.stream_pcm(signed(http_url), SECOND)
    except client.ServerError as exc:
        return f"{exc.code} {exc.message}"
    return " | ".join(r.text for r in received if r.status == "final")


async def test_a_redis_outage_is_an_answer_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gateway and worker start while Redis is down: the gateway listens (healthz 200, readyz 503) and a
    client gets 503 with the reason; once Redis is up both connect and a session works; Redis stopped
    again with clients arriving: each gets 503, the gateway lives; back again, sessions work."""
    redis = RedisServer(free_port(), tmp_path)
    config = write_config(tmp_path, redis.url)
    seen: list[str] = []
    with trio.fail_after(GUARD):
        worker = await trio.lowlevel.open_process(
            [sys.executable, "-m", "asr_actors", "worker", "--engine", "fake", "--config", str(config)],
            stderr=subprocess.DEVNULL,
        )
        try:
            async with running_server(config) as (url, gateway):
                assert (200, 503) == (await http_status(url, "/healthz"), await http_status(url, "/readyz"))
                down = await session_outcome(url)
                assert down.startswith("503 "), down
                seen.append(f"Redis down at start: {down}")
                await redis.start()
                with trio.fail_after(30):
                    while await http_status(url, "/readyz") != 200:  # noqa: ASYNC110 -- another process
                        await trio.sleep(0.2)
                assert "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9" == await session_outcome(url)
                await redis.stop()
                arriving = [await session_outcome(url) for _ in range(5)]
                assert all(outcome.startswith("503 ") for outcome in arriving), arriving
                seen.append(f"Redis stopped, clients arriving: {arriving[0]}")
                assert (200, 503) == (await http_status(url, "/healthz"), await http_status(url, "/readyz"))
                assert gateway.returncode is None
                await redis.start()
                with trio.fail_after(30):
                    while (outcome := await session_outcome(url)).startswith("503 "):  # noqa: ASYNC110
                        await trio.sleep(0.2)
                assert "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9" == outcome
        finally:
            await stop(worker)
            await redis.stop()
    report("; ".join(seen), capsys)


async def test_a_worker_serves_metrics_health_and_a_bounded_drain(tmp_path: Path) -> None:
    """A worker with --metrics-port answers /healthz, /readyz (its checks) and /metrics (build info, the
    sessions it claimed, per engine); on SIGTERM with a session that would run 30 s more, it exits 0 after
    [worker] drain_timeout (1 s here), not after the session."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = write_config(tmp_path, redis.url)
            config.write_text(config.read_text() + "[worker]\ndrain_timeout = 1.0\n")
            worker = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "asr_actors",
                    "worker",
                    "--engine",
                    "fake",
                    "--config",
                    str(config),
                    "--metrics-port",
                    str(port),
                ],
                stderr=subprocess.DEVNULL,
            )
            try:
                await workers_announced(redis, 1)
                status, _, body = await http_get(base, "/healthz")
                assert (200, "fake") == (status, json.loads(body)["engine"])
                status, _, body = await http_get(base, "/readyz")
                assert (200, {"redis": "ok", "draining": "ok", "claiming": "ok"}) == (
                    status,
                    json.loads(body)["checks"],
                )
                async with running_server(config) as (url, _), trio.open_nursery() as clients:
                    await client.stream_pcm(signed(url), SECOND)
                    text = (await http_get(base, "/metrics"))[2].decode()
                    assert 'asr_worker_sessions_total{engine="fake"} 1.0' in text
                    assert "asr_build_info{" in text
                    clients.start_soon(
                        functools.partial(client.stream_pcm, signed(url), SECOND * 30, realtime=True)
                    )
                    await trio.sleep(1.0)
                    worker.terminate()
                    started = trio.current_time()
                    assert 0 == await worker.wait()
                    drained_in = trio.current_time() - started
                    clients.cancel_scope.cancel()
            finally:
                await stop(worker)
    assert drained_in < 10, drained_in  # the 1 s bound and the goodbye, not the session's 30 s
