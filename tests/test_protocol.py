"""Protocol v1 codec, sans-IO: messages in, events out, no sockets."""

from __future__ import annotations

import base64
import io
import json
import wave

import pytest

from asr_actors import protocol
from asr_actors.protocol import (
    AudioReceived,
    ClientDecoder,
    EndOfAudio,
    ErrorCode,
    PingReceived,
    Pong,
    ProtocolError,
    Result,
    ResultStatus,
    StreamOpened,
)

MAX = 65536


def decoder(**kwargs: object) -> ClientDecoder:
    options: dict[str, object] = {
        "max_frame_bytes": MAX,
        "default_language": "en",
        "default_sample_rate": 16000,
    }
    options.update(kwargs)
    return ClientDecoder(**options)  # type: ignore[arg-type]


def json_frame(status: str, data: bytes | None = None, **extra: object) -> str:
    frame: dict[str, object] = {"status": status, **extra}
    if data is not None:
        frame["data"] = base64.b64encode(data).decode()
    return json.dumps(frame)


def wav_bytes(pcm: bytes, rate: int = 16000, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return buffer.getvalue()


def expect_error(code: ErrorCode, message_part: str, decode: ClientDecoder, message: str | bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode.receive(message)
    assert code == caught.value.code
    assert message_part in caught.value.message


# --- handshake -------------------------------------------------------------------------------------


def test_handshake_fields() -> None:
    """The handshake query gives appkey, date, signature, nonce, lang and sample_rate."""
    handshake = protocol.parse_handshake(
        "/v1/asr?appkey=k&date=1700000000&signature=ab%2Bc&nonce=n1&lang=zh&sample_rate=8000"
    )
    assert ("k", "1700000000", "ab+c", "n1", "zh", 8000) == (
        handshake.appkey,
        handshake.date,
        handshake.signature,
        handshake.nonce,
        handshake.language,
        handshake.sample_rate,
    )


def test_handshake_unencoded_plus_becomes_space() -> None:
    """An unencoded '+' arrives as a space (signing.verify turns it back); optional fields default to None."""
    handshake = protocol.parse_handshake("/v1/asr?appkey=k&date=1&signature=ab+c")
    assert "ab c" == handshake.signature
    assert (None, None, None) == (handshake.nonce, handshake.language, handshake.sample_rate)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v1/asr?date=1&signature=s", ErrorCode.UNAUTHORIZED),
        ("/v1/asr?appkey=k&signature=s", ErrorCode.UNAUTHORIZED),
        ("/v1/asr", ErrorCode.UNAUTHORIZED),
        ("/v2/asr?appkey=k&date=1&signature=s", ErrorCode.NOT_FOUND),
        ("/v1/asr?appkey=k&date=1&signature=s&sample_rate=fast", ErrorCode.BAD_INPUT),
        ("/v1/asr?appkey=k&date=1&signature=s&sample_rate=0", ErrorCode.BAD_INPUT),
    ],
)
def test_handshake_refusals(target: str, code: ErrorCode) -> None:
    """Missing auth fields are 401 (the old server's message); a wrong path 404; a bad rate 403."""
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_handshake(target)
    assert code == caught.value.code


# --- client frames ---------------------------------------------------------------------------------


def test_binary_frames_open_the_stream_with_handshake_or_defaults() -> None:
    """The first audio emits StreamOpened once, from the handshake values or else the defaults."""
    assert [StreamOpened("en", 16000), AudioReceived(b"\x01\x00")] == decoder().receive(b"\x01\x00")
    decode = decoder(language="zh", sample_rate=8000)
    assert [StreamOpened("zh", 8000), AudioReceived(b"ab")] == decode.receive(b"ab")
    assert [AudioReceived(b"cd")] == decode.receive(b"cd")


def test_old_client_json_stream() -> None:
    """The ASRWebSocketServer client's frames: language and rate from the first frame; `end`'s data is
    ignored (its clients send "", "none" or leftovers there)."""
    decode = decoder()
    first = decode.receive(
        json_frame("start", b"\x00\x01" * 640, language_code="zh", audio_format="pcm/16000")
    )
    assert [StreamOpened("zh", 16000), AudioReceived(b"\x00\x01" * 640)] == first
    assert [AudioReceived(b"\x02\x03")] == decode.receive(
        json_frame("partial", b"\x02\x03", language_code="en", audio_format="pcm/16000")
    )
    assert [EndOfAudio()] == decode.receive(json_frame("end", b"\x04\x05"))
    assert decode.ended


def test_wav_header_is_checked_and_skipped() -> None:
    """A whole WAV file sent as the stream: the RIFF header is skipped and its format checked."""
    pcm = b"\x10\x00" * 618
    decode = decoder()
    events = decode.receive(json_frame("start", wav_bytes(pcm), audio_format="wav/16000"))
    assert [StreamOpened("en", 16000), AudioReceived(pcm)] == events
    # The same on the binary path.
    assert [StreamOpened("en", 16000), AudioReceived(pcm)] == decoder().receive(wav_bytes(pcm))


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2)])
def test_wav_of_the_wrong_format_is_refused(rate: int, channels: int) -> None:
    """A WAV header that disagrees with the session's format is a 403 naming what was found."""
    expect_error(
        ErrorCode.BAD_INPUT, "Unsupported WAV", decoder(), wav_bytes(b"\x00\x00" * 8, rate, channels)
    )


def test_end_without_audio() -> None:
    """{"status":"end"} as the first frame still opens (then ends) the stream."""
    assert [StreamOpened("en", 16000), EndOfAudio()] == decoder().receive('{"status":"end"}')


def test_ping() -> None:
    """Text 'ping' is a ping at any time, before or during audio."""
    decode = decoder()
    assert [PingReceived()] == decode.receive("ping")
    decode.receive(b"\x00\x00")
    assert [PingReceived()] == decode.receive("ping")


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        ("hello", ErrorCode.BAD_INPUT, "The data must be json format"),
        ("[1, 2]", ErrorCode.BAD_INPUT, "The data must be json format"),
        ('{"data": ""}', ErrorCode.BAD_INPUT, "Parameters 'status' is missing"),
        ('{"status": "start"}', ErrorCode.BAD_INPUT, "Parameters 'data' is missing"),
        ('{"status": "pause", "data": "AAA="}', ErrorCode.BAD_INPUT, "Parameters 'status' is invalid"),
        ('{"status": "start", "data": "***"}', ErrorCode.BAD_INPUT, "not valid base64"),
        ('{"status": "start", "data": 12}', ErrorCode.BAD_INPUT, "base64 string"),
        ('{"status": "start", "data": "AAAA"}', ErrorCode.BAD_INPUT, "even count"),
        (b"\x00\x00\x00", ErrorCode.BAD_INPUT, "even count"),
        (
            '{"status": "start", "data": "AAAA", "audio_format": "mp3/16000"}',
            ErrorCode.BAD_INPUT,
            "audio_format",
        ),
        ('{"status": "start", "data": "AAAA", "audio_format": "pcm"}', ErrorCode.BAD_INPUT, "audio_format"),
        (b"\x00" * (2 * 1024 * 1024), ErrorCode.TOO_LARGE, "exceeds"),
        (json_frame("start", b"\x00" * (MAX + 2)), ErrorCode.TOO_LARGE, "exceeds"),
        (b"RIFF\x00\x00\x00\x00WAVEdata", ErrorCode.BAD_INPUT, "WAV"),
    ],
)
def test_bad_input(message: str | bytes, code: ErrorCode, text: str) -> None:
    """Each malformed frame is refused with a documented code and a message saying what is wrong."""
    expect_error(code, text, decoder(), message)


def test_rate_conflicts_are_refused() -> None:
    """audio_format must agree with the handshake's sample_rate and with earlier frames."""
    expect_error(
        ErrorCode.BAD_INPUT,
        "does not match",
        decoder(sample_rate=8000),
        json_frame("start", b"\x00\x00", audio_format="pcm/16000"),
    )
    decode = decoder()
    decode.receive(json_frame("start", b"\x00\x00", audio_format="pcm/16000"))
    expect_error(
        ErrorCode.BAD_INPUT,
        "does not match",
        decode,
        json_frame("partial", b"\x00\x00", audio_format="pcm/8000"),
    )


def test_audio_after_end_is_refused() -> None:
    """Nothing may follow the end of audio."""
    decode = decoder()
    decode.receive('{"status":"end"}')
    expect_error(ErrorCode.BAD_INPUT, "after end", decode, b"\x00\x00")


# --- server frames ---------------------------------------------------------------------------------


def test_result_envelope() -> None:
    """Results use the old server's envelope, with begin/end times added inside data."""
    encoded = protocol.encode("T1", Result(ResultStatus.FINAL, "T1-0", "你好 world", 120, 1500))
    assert {
        "code": 200,
        "message": "SUCCESS",
        "task_id": "T1",
        "data": {
            "task_id": "T1",
            "speech_id": "T1-0",
            "status": "final",
            "result": "你好 world",
            "begin_time": 120,
            "end_time": 1500,
        },
    } == json.loads(encoded)
    assert "你好" in encoded  # UTF-8 on the wire, not \\u escapes
    assert "pong" == protocol.encode("T1", Pong())


def test_error_envelope_and_close_codes() -> None:
    """Errors: {"code", "message", "data": ""}, closed with 4000 + code and a reason that fits the frame."""
    assert {"code": 408, "message": "Connection Timeout", "data": ""} == json.loads(
        protocol.encode_error(ErrorCode.TIMEOUT, protocol.IDLE)
    )
    assert 4401 == ErrorCode.UNAUTHORIZED.close_code
    assert len(protocol.close_reason("语" * 100).encode()) <= 123


def test_java_client_json_in_binary_frames() -> None:
    """Java-WebSocket sends every JSON message as a binary frame: a first binary frame that is a JSON
    message puts the session in JSON mode; its short last piece comes as raw PCM; `end` says "none"."""
    decode = decoder()
    pcm = b"\x10\x00" * 640

    def java(status: str, data: str) -> bytes:
        # Byte for byte what its AudioBody.getBytes() makes: newlines, a space after each colon.
        return (
            f'{{"language_code": "en",\n"audio_format": "wav/16000",\n"status": "{status}",\n'
            f'"data": "{data}"\n}}'
        ).encode()

    encoded = base64.b64encode(pcm).decode()
    assert [StreamOpened("en", 16000), AudioReceived(pcm)] == decode.receive(java("start", encoded))
    assert [AudioReceived(pcm)] == decode.receive(java("partial", encoded))
    assert [AudioReceived(b"\x01\x00" * 10)] == decode.receive(b"\x01\x00" * 10)
    assert [EndOfAudio()] == decode.receive(java("end", "none"))


def test_pcm_that_looks_like_json_stays_pcm() -> None:
    """Once the first frame was PCM, every binary frame is PCM, whatever its bytes spell."""
    decode = decoder()
    decode.receive(b"\x00\x00" * 800)
    looks_like_json = b'{"status": "end"}'.ljust(18)
    assert [AudioReceived(looks_like_json)] == decode.receive(looks_like_json)
    assert not decode.ended


def test_page_start_twice_then_raw_pcm_labelled_wav() -> None:
    """The old page: `start` twice with empty data, then raw PCM labelled `wav/16000`, then `end` with ""."""
    decode = decoder()
    pcm = b"\x10\x00" * 640
    assert [] == decode.receive(json_frame("start", b"", audio_format="wav/16000"))
    assert [] == decode.receive(json_frame("start", b"", audio_format="wav/16000"))
    assert [StreamOpened("en", 16000), AudioReceived(pcm)] == decode.receive(
        json_frame("partial", pcm, audio_format="wav/16000")
    )
    assert [EndOfAudio()] == decode.receive(json_frame("end", b"", audio_format="wav/16000"))


@pytest.mark.parametrize(
    ("first", "message", "code", "part"),
    [
        (
            b'{"status": "start", "data": ""}',
            b'{"status": "partial", "data": "%%%"}',
            ErrorCode.BAD_INPUT,
            "base64",
        ),
        (
            b'{"status": "start", "data": ""}',
            b'{"status": "partial"}',
            ErrorCode.BAD_INPUT,
            "'data' is missing",
        ),
        (b"\x00\x00", b"\x00\x00\x00", ErrorCode.BAD_INPUT, "even count"),
        (b'{"status": "start", "data": ""}', b"\x00\x00\x00", ErrorCode.BAD_INPUT, "even count"),
    ],
)
def test_leniency_keeps_the_checks_that_protect(
    first: bytes, message: bytes, code: ErrorCode, part: str
) -> None:
    """Binary JSON sessions still refuse bad base64 and missing data; PCM still needs whole samples."""
    decode = decoder()
    decode.receive(first)
    expect_error(code, part, decode, message)
