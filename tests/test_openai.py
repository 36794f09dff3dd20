"""The OpenAI-compatible file API in process (fake engine, in-memory streams, no threads but the decoder's):
the request as OpenAI's SDKs send it, by hand, and every error as the API shapes it. The SDK itself runs
against a real `serve` in tests/e2e/test_openai_sdk.py."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from asr_actors.engines.fake import FakeEngine
from asr_actors.server import Gateway
from tests.support import APPKEY, SECRET, fake_config, wired_gateway

GUARD = 10
API_KEY = "sk-test-0123456789abcdef"
BOUNDARY = "asr-actors-test-boundary"


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.tobytes())
    return out.getvalue()


def multipart(fields: dict[str, str | list[str]], file: bytes | None, filename: str = "speech.wav") -> bytes:
    parts: list[bytes] = []
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            parts.append(
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{one}\r\n'.encode()
            )
    if file is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + file
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(
    body: bytes,
    *,
    key: str | None = API_KEY,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    length: int | None = None,
) -> bytes:
    head = [
        "POST /v1/audio/transcriptions HTTP/1.1",
        "Host: t",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if length is None else length}",
    ]
    if key is not None:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def gateway(monkeypatch: pytest.MonkeyPatch, **sections: dict[str, object]) -> Gateway:
    monkeypatch.setenv("TESTER_KEY", API_KEY)
    config = fake_config(
        apps={APPKEY: {"secret": SECRET}, "tester": {"api_key_env": "TESTER_KEY"}}, **sections
    )
    return wired_gateway(config, {"fake": FakeEngine()}, {APPKEY: SECRET})


async def exchange(gw: Gateway, data: bytes) -> tuple[int, dict[str, str], bytes]:
    client, server = trio.testing.memory_stream_pair()
    answer = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gw.handle_connection, server)
        await client.send_all(data)
        while chunk := await client.receive_some():
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_a_file_is_transcribed_in_each_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 s of audio at 8 kHz, resampled to the engine's 16 kHz: the fake engine hears 20 words (one per
    100 ms) in 2 sentences (one per second), whatever the format."""
    gw = gateway(monkeypatch)
    audio = wav_bytes(2.0, rate=8000)
    words = [f"w{k}" for k in range(20)]
    first, second = " ".join(words[:10]), " ".join(words[10:])
    with trio.fail_after(GUARD):
        answers = {
            form: await exchange(
                gw, request(multipart({"model": "whisper-1", "response_format": form}, audio))
            )
            for form in ("json", "text", "srt", "vtt", "verbose_json")
        }
    assert {form: status for form, (status, _, _) in answers.items()} == dict.fromkeys(answers, 200)
    assert {"text": f"{first} {second}"} == json.loads(answers["json"][2])
    assert f"{first} {second}\n" == answers["text"][2].decode()
    assert answers["srt"][2].decode().startswith(f"1\n00:00:00,000 --> 00:00:01,000\n{first}\n\n2\n")
    assert answers["vtt"][2].decode().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")
    assert "text/vtt; charset=utf-8" == answers["vtt"][1]["content-type"]
    verbose = json.loads(answers["verbose_json"][2])
    assert (verbose["language"], verbose["duration"], verbose["text"]) == (
        "english",
        2.0,
        f"{first} {second}",
    )
    assert [(0, 0.0, 1.0, first), (1, 1.0, 2.0, second)] == [
        (s["id"], s["start"], s["end"], s["text"]) for s in verbose["segments"]
    ]


async def test_prompt_and_word_timestamps_reach_the_engine_as_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    """`prompt` and `timestamp_granularities[]=word` become session options the engine may use (the local
    engine: Whisper's prompt, word times) and an engine that cannot runs without (no refusal)."""
    engine = FakeEngine()
    monkeypatch.setenv("TESTER_KEY", API_KEY)
    config = fake_config(apps={APPKEY: {"secret": SECRET}, "tester": {"api_key_env": "TESTER_KEY"}})
    gw = wired_gateway(config, {"fake": engine}, {APPKEY: SECRET})
    fields = {"model": "whisper-1", "prompt": " Dashwood, Norland. ", "timestamp_granularities[]": "word"}
    with trio.fail_after(GUARD):
        status, _, _ = await exchange(gw, request(multipart(fields, wav_bytes(1.0))))
    assert 200 == status
    [spec] = engine.specs
    assert (spec.options.prompt, spec.options.words) == ("Dashwood, Norland.", True)
    assert {"prompt", "words"} == spec.options.advisory
    engine.options = frozenset()  # an engine that honours neither still runs the file
    with trio.fail_after(GUARD):
        status, _, _ = await exchange(gw, request(multipart(fields, wav_bytes(1.0))))
    assert 200 == status


def api_error(body: bytes) -> tuple[str, str | None, str | None]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["type"], error["param"], error["code"]


@pytest.mark.parametrize(
    ("data", "status", "shape"),
    [
        (request(multipart({"model": "whisper-1"}, wav_bytes(0.5)), key=None), 401,
         ("invalid_request_error", None, "invalid_api_key")),
        (request(multipart({"model": "whisper-1"}, wav_bytes(0.5)), key="sk-wrong-0123456789"), 401,
         ("invalid_request_error", None, "invalid_api_key")),
        (request(b'{"model": "whisper-1"}', content_type="application/json"), 415,
         ("invalid_request_error", None, None)),
        (request(multipart({"model": "nosuch"}, wav_bytes(0.5))), 400,
         ("invalid_request_error", "model", "model_not_found")),
        (request(multipart({}, wav_bytes(0.5))), 400, ("invalid_request_error", "model", None)),
        (request(multipart({"model": "whisper-1"}, None)), 400, ("invalid_request_error", "file", None)),
        (request(multipart({"model": "whisper-1"}, b"RIFF but not really audio" * 40)), 400,
         ("invalid_request_error", "file", "invalid_file_format")),
        (request(multipart({"model": "whisper-1", "language": "xx"}, wav_bytes(0.5))), 400,
         ("invalid_request_error", "language", None)),
        (request(multipart({"model": "whisper-1", "response_format": "docx"}, wav_bytes(0.5))), 400,
         ("invalid_request_error", "response_format", None)),
        (request(multipart({"model": "whisper-1"}, wav_bytes(0.5)), length=30 << 20), 413,
         ("invalid_request_error", None, "file_too_large")),
        (request(b"--" + BOUNDARY.encode() + b"\r\nnot a part header\r\n\r\n"), 400,
         ("invalid_request_error", None, None)),
    ],
    ids=["no key", "wrong key", "not multipart", "unknown model", "no model", "no file", "not audio",
         "unknown language", "unknown format", "declared too large", "malformed multipart"],
)  # fmt: skip
async def test_bad_requests_get_openai_shaped_errors(
    monkeypatch: pytest.MonkeyPatch, data: bytes, status: int, shape: tuple[str, str | None, str | None]
) -> None:
    gw = gateway(monkeypatch)
    with trio.fail_after(GUARD):
        answer = await exchange(gw, data)
        # The gateway goes on: the next request is answered.
        good = await exchange(gw, request(multipart({"model": "whisper-1"}, wav_bytes(1.0))))
    assert (status, shape) == (answer[0], api_error(answer[2]))
    assert 200 == good[0]


async def test_a_file_too_large_is_refused_as_it_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked upload (no Content-Length) past [openai] max_file_bytes: 413 once the file part passes it,
    without the rest being read."""
    gw = gateway(monkeypatch, openai={"max_file_bytes": 50_000})
    body = multipart({"model": "whisper-1"}, wav_bytes(3.0))  # 96 KB
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = request(b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    with trio.fail_after(GUARD):
        status, _, answer = await exchange(gw, head + chunked)
    assert (413, ("invalid_request_error", "file", "file_too_large")) == (status, api_error(answer))


async def test_get_is_405_with_allow_post(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway(monkeypatch)
    with trio.fail_after(GUARD):
        status, headers, _ = await exchange(
            gw, b"GET /v1/audio/transcriptions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
    assert (405, "POST") == (status, headers["allow"])


async def test_an_app_past_its_daily_audio_gets_429(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-app limits apply as for live sessions: with no daily audio left, 429 as OpenAI's rate limit."""
    gw = gateway(monkeypatch, auth={"audio_minutes_per_day": 0.01})  # 0.6 s a day
    with trio.fail_after(GUARD):
        first = await exchange(gw, request(multipart({"model": "whisper-1"}, wav_bytes(1.0))))
        second = await exchange(gw, request(multipart({"model": "whisper-1"}, wav_bytes(1.0))))
    assert 429 == first[0]  # 1 s of audio against 0.6 s left
    assert (429, ("rate_limit_error", None, "rate_limit_exceeded")) == (second[0], api_error(second[2]))


async def test_an_upload_that_stalls_is_closed_at_request_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that sends half its upload and stops holds its connection for [openai] request_timeout
    (600 s), not for ever, and not for the handshake timeout (10 s) meant for request heads."""
    gw = gateway(monkeypatch)
    data = request(multipart({"model": "whisper-1"}, wav_bytes(1.0)))
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(GUARD + 600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gw.handle_connection, server)
            started = trio.current_time()
            await client.send_all(data[: len(data) // 2])
            assert b"" == await client.receive_some()
            closed_after = trio.current_time() - started
    assert 600 == pytest.approx(closed_after, abs=0.01)


def test_g711_decodes_as_the_standard_says() -> None:
    """μ-law and A-law against Python's own codec (audioop, deprecated but exact) for every byte."""
    import warnings

    from asr_actors import audio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    every = bytes(range(256))
    assert audioop.ulaw2lin(every, 2) == audio.g711_to_pcm(every, audio.ULAW)
    assert audioop.alaw2lin(every, 2) == audio.g711_to_pcm(every, audio.ALAW)


def test_a_stream_resampled_in_pieces_keeps_its_length_and_tone(tmp_path: Path) -> None:
    """24 kHz in 20 ms pieces (one sample split across two pieces) to 16 kHz: 2/3 the samples, and a
    1 kHz tone is still a 1 kHz tone."""
    from asr_actors import audio

    rate = 24000
    t = np.arange(rate) / rate
    pcm = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype("<i2").tobytes()
    resampler = audio.Resampler(rate)
    out = b"".join(resampler.feed(pcm[i : i + 961]) for i in range(0, len(pcm), 961)) + resampler.flush()
    samples = np.frombuffer(out, dtype="<i2").astype(np.float64)
    assert abs(len(samples) - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(samples))
    assert 1000 == pytest.approx(np.argmax(spectrum) * 16000 / len(samples), abs=2)


@pytest.mark.parametrize("engine", ["dashscope-sdk", "dashscope-native", "iflytek"])
async def test_a_file_through_each_service_engine(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery, engine: str
) -> None:
    """The file API on DashScope (the official SDK and the native transport) and iFlytek, each against its
    protocol-accurate fake on loopback (real sockets, real clock): 2.5 s of Chinese, the fake's text of a
    character per 100 ms in its sentences, and the service's word times in `verbose_json`."""
    from asr_actors.backend import build_engines
    from asr_actors.testing import fake_dashscope, fake_iflytek

    service, _, transport = engine.partition("-")
    fake: fake_dashscope.FakeDashScope | fake_iflytek.FakeIflytek
    if service == "dashscope":
        fake, text = fake_dashscope.FakeDashScope(), fake_dashscope.text
        settings: dict[str, object] = {"url": "", "api_key_env": "SERVICE_KEY", "transport": transport}
    else:
        fake, text = fake_iflytek.FakeIflytek(), fake_iflytek.text
        settings = {"url": "", "app_id": "test-app", "api_key_env": "SERVICE_KEY"}
    monkeypatch.setenv("SERVICE_KEY", "test-key")
    monkeypatch.setenv("TESTER_KEY", API_KEY)
    with trio.fail_after(30):
        await nursery.start(fake.serve)
        config = fake_config(
            apps={APPKEY: {"secret": SECRET}, "tester": {"api_key_env": "TESTER_KEY"}},
            engines={"default": "fake", service: {**settings, "url": fake.url}},
            languages={"zh": {"engine": service}, "en": {"engine": "fake"}},
        )
        gw = wired_gateway(config, build_engines(config), {APPKEY: SECRET})
        await gw.prepare()
        form = {"model": "whisper-1", "language": "zh", "response_format": "verbose_json"}
        status, _, body = await exchange(
            gw, request(multipart({**form, "timestamp_granularities[]": ["word", "segment"]}, wav_bytes(2.5)))
        )
    verbose = json.loads(body)
    assert 200 == status, verbose
    assert (text(0, 25), "chinese") == (verbose["text"], verbose["language"])
    assert [text(0, 10), text(10, 20), text(20, 25)] == [segment["text"] for segment in verbose["segments"]]
    assert 25 == len(verbose["words"])
    assert (text(0, 1), 0.0, 0.1) == (
        verbose["words"][0]["word"],
        verbose["words"][0]["start"],
        verbose["words"][0]["end"],
    )
