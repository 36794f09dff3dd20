"""The Node.js reference worker (engines/node-echo): the conformance suite, then a session through a real
gateway, all against a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from asr_actors import client
from asr_actors.testing.redis_server import redis_server
from asr_actors.testing.subprocess_server import running_server, stop
from asr_actors.tools import conformance

GUARD = 90
WORKER = Path(__file__).resolve().parents[2] / "engines" / "node-echo" / "index.js"
NODE = shutil.which("node") or "/usr/bin/node"


@asynccontextmanager
async def node_worker(redis_url: str) -> AsyncIterator[trio.Process]:
    process = await trio.lowlevel.open_process(
        [NODE, str(WORKER), "--redis", redis_url, "--heartbeat-ms", "500", "--ttl-ms", "1500"],
        stderr=subprocess.DEVNULL,
    )
    try:
        await trio.sleep(1.5)  # connect and write its liveness key
        yield process
    finally:
        await stop(process)


async def test_node_worker_passes_the_conformance_suite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every conformance case passes against the Node.js worker."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis, node_worker(redis.url):
            outcomes = await conformance.run("node-echo", redis.url)
    with capsys.disabled():
        for outcome in outcomes:
            verdict = "PASS" if outcome.passed else "FAIL"
            print(f"\n[conformance node-echo] {verdict} {outcome.case}: {outcome.reason}")
    assert [(case, True) for case, _ in conformance.CASES] == [(o.case, o.passed) for o in outcomes], outcomes


async def test_session_through_a_gateway_to_the_node_worker(tmp_path: Path) -> None:
    """A client session through a real gateway on the Redis bus, recognised by the Node.js worker:
    one final per tone burst, describing its duration."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis, node_worker(redis.url) as process:
            config = tmp_path / "config.toml"
            config.write_text(
                '[apps.node]\nsecret = "node-secret-0123456789"\n[engines]\ndefault = "node-echo"\n'
                f'[languages.en]\nengine = "node-echo"\n[bus]\nkind = "redis"\nurl = "{redis.url}"\n'
            )
            async with running_server(config) as (url, _pid):
                ws_url = url.replace("http://", "ws://") + "v1/asr"
                signed = client.sign_url(ws_url, "node", "node-secret-0123456789", nonce=client.fresh_nonce())
                results = await client.stream_pcm(signed, conformance.tone_bursts(bursts=2))
            process.terminate()
            assert 0 == await process.wait()  # SIGTERM drains and exits cleanly
    finals = [r.text for r in results if r.status == "final"]
    assert 2 == len(finals), finals
    assert finals[0].startswith("sentence 1: 1.0 s at "), finals
    assert finals[1].startswith("sentence 2: 1.0 s at "), finals
    assert any(r.status == "partial" for r in results)
    assert "end" == results[-1].status
