"""The engine-protocol conformance suite, run against the Python worker (real redis-server), and shown
to catch a worker that breaks the contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from asr_actors.engines.fake import FakeEngine
from asr_actors.testing.redis_server import redis_server
from asr_actors.tools import conformance
from asr_actors.worker import Worker
from tests.support import fake_config

GUARD = 60
DATA = Path(__file__).resolve().parent / "data" / "librivox"


async def test_python_worker_passes_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Python worker (with the fake engine) passes all six cases."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(), concurrency=4).run)
            outcomes = await conformance.run("fake", server.url)
            nursery.cancel_scope.cancel()
    with capsys.disabled():
        for outcome in outcomes:
            verdict = "PASS" if outcome.passed else "FAIL"
            print(f"\n[conformance python] {verdict} {outcome.case}: {outcome.reason}")
    assert [(case, True) for case, _ in conformance.CASES] == [(o.case, o.passed) for o in outcomes], outcomes


async def test_a_worker_that_never_flushes_fails_the_flush_cases(tmp_path: Path) -> None:
    """An engine that hangs at end of audio fails the cases that need an `end`, with the reason."""
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, FakeEngine(hang_on_finish=True), concurrency=8).run)
            outcomes = {o.case: o for o in await conformance.run("fake", server.url, finish_timeout=2.0)}
            nursery.cancel_scope.cancel()
    assert outcomes["heartbeat"].passed
    assert not outcomes["normal speech"].passed
    assert "no end within 2 s" in outcomes["normal speech"].reason
    assert not outcomes["end in mid-sentence"].passed


async def test_local_engine_worker_passes_with_real_speech(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python worker running the real local engine passes every case, fed LibriVox speech."""
    from asr_actors import client
    from asr_actors.config import LocalEngineConfig
    from asr_actors.engines.local import LocalEngine

    speech = b"".join(
        [
            await trio.to_thread.run_sync(
                client.load_audio, str(DATA / f"sense_and_sensibility_01_austen_64kb-{n}.wav")
            )
            for n in ("0880", "0930")
        ]
    )
    with trio.fail_after(GUARD * 2):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            config = fake_config(bus={"kind": "redis", "url": server.url})
            await nursery.start(Worker(config, LocalEngine(LocalEngineConfig()), concurrency=2).run)
            outcomes = await conformance.run("local", server.url, speech)
            nursery.cancel_scope.cancel()
    with capsys.disabled():
        for outcome in outcomes:
            verdict = "PASS" if outcome.passed else "FAIL"
            print(f"\n[conformance python/local] {verdict} {outcome.case}: {outcome.reason}")
    assert [(case, True) for case, _ in conformance.CASES] == [(o.case, o.passed) for o in outcomes], outcomes


async def test_iflytek_worker_passes_on_the_fake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`worker --engine iflytek` against the protocol-accurate fake iFlytek service passes every case."""
    from asr_actors.backend import build_engines
    from asr_actors.testing.fake_iflytek import FakeIflytek

    monkeypatch.setenv("ASR_TEST_IFLYTEK_KEY", "test-key")
    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as server, trio.open_nursery() as nursery:
            fake = FakeIflytek()
            url = await nursery.start(fake.serve)
            config = fake_config(
                bus={"kind": "redis", "url": server.url},
                engines={
                    "iflytek": {"url": url, "app_id": "test-app", "api_key_env": "ASR_TEST_IFLYTEK_KEY"}
                },
            )
            engine = build_engines(config, {"iflytek"})["iflytek"]
            await nursery.start(Worker(config, engine, concurrency=4).run)
            outcomes = await conformance.run("iflytek", server.url, language="zh")
            nursery.cancel_scope.cancel()
    with capsys.disabled():
        for outcome in outcomes:
            verdict = "PASS" if outcome.passed else "FAIL"
            print(f"\n[conformance python/iflytek] {verdict} {outcome.case}: {outcome.reason}")
    assert [(case, True) for case, _ in conformance.CASES] == [(o.case, o.passed) for o in outcomes], outcomes
