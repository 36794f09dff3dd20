"""Session options (docs/protocol.md): parsed and checked without sockets, carried to the engines."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from asr_actors import session_options
from asr_actors.engine_protocol import wire
from asr_actors.engines.base import Hotword, SessionOptions, StreamSpec, UnsupportedStream, refuse_unhonoured
from asr_actors.engines.dashscope_wire import run_task, task_parameters
from asr_actors.engines.iflytek_wire import query_options
from asr_actors.engines.local import hotword_hint, session_prompt, unpunctuated
from asr_actors.protocol import ClientDecoder, ErrorCode, ProtocolError, StreamOpened
from asr_actors.session_options import OptionCaps, parse, to_wire

CAPS = OptionCaps(max_hotwords=3, max_hotword_chars=20, max_prompt_chars=40)
EVERYTHING: dict[str, Any] = {
    "hotwords": ["Dashwood", {"text": "Norland  Park", "weight": 2}],
    "prompt": "Sense and Sensibility",
    "words": True,
    "punctuation": False,
    "language_hints": ["en", "zh-CN"],
    "dashscope": {"vocabulary_id": "vocab-abc_1", "disfluency_removal": True},
    "iflytek": {"pd": "medical"},
}


def test_every_option_is_read() -> None:
    options = parse(EVERYTHING, CAPS)
    assert options == SessionOptions(
        hotwords=(Hotword("Dashwood"), Hotword("Norland Park", 2.0)),
        prompt="Sense and Sensibility",
        words=True,
        punctuation=False,
        language_hints=("en", "zh-CN"),
        extras=(
            ("dashscope.vocabulary_id", "vocab-abc_1"),
            ("dashscope.disfluency_removal", True),
            ("iflytek.pd", "medical"),
        ),
    )
    assert options.asked() == {
        "hotwords",
        "prompt",
        "words",
        "punctuation",
        "language_hints",
        "dashscope.vocabulary_id",
        "dashscope.disfluency_removal",
        "iflytek.pd",
    }
    # The wire form (engine protocol v2) reads back to the same options.
    assert parse(json.loads(json.dumps(to_wire(options))), CAPS) == options


def test_no_options_ask_for_nothing() -> None:
    assert parse({}, CAPS) == SessionOptions()
    assert SessionOptions().asked() == frozenset()
    assert to_wire(SessionOptions()) == {}


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ([], "Option 'options' takes an object"),
        ({"hotword": ["x"]}, "Unknown option 'hotword'"),
        ({"hotwords": "Dashwood"}, "Option 'hotwords' takes a list of phrases"),
        ({"hotwords": ["a", "b", "c", "d"]}, "at most 3 phrases"),
        ({"hotwords": ["x" * 21]}, "phrases of at most 20 characters"),
        ({"hotwords": [" "]}, "phrases of text"),
        ({"hotwords": [{"text": "x", "weight": 0}]}, "weights above 0"),
        ({"hotwords": [{"text": "x", "weight": True}]}, "weights above 0"),
        ({"hotwords": [{"text": "x", "boost": 2}]}, "not 'boost'"),
        ({"prompt": "x" * 41}, "Option 'prompt' has at most 40 characters"),
        ({"words": "yes"}, "Option 'words' takes true or false"),
        ({"language_hints": ["english"]}, "language codes"),
        ({"dashscope": {"vocabulary": "v"}}, "Unknown option 'dashscope.vocabulary'"),
        ({"dashscope": {"vocabulary_id": "no spaces"}}, "the id of a DashScope vocabulary"),
        ({"iflytek": {"pd": "cooking"}}, "Option 'iflytek.pd' takes one of"),
        ({"iflytek": "medical"}, "an object of iflytek's options"),
    ],
)
def test_mistakes_are_bad_input_naming_the_option(raw: object, complaint: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(raw, CAPS)
    assert refused.value.code is ErrorCode.BAD_INPUT
    assert complaint in refused.value.message


def decoder() -> ClientDecoder:
    return ClientDecoder(
        max_frame_bytes=65536,
        default_language="en",
        default_sample_rate=16000,
        read_options=functools.partial(parse, caps=CAPS),
    )


def test_protocol_v1_start_frame_carries_options_to_the_stream() -> None:
    decode = decoder()
    start = {"status": "start", "data": "", "options": {"hotwords": ["Dashwood"], "words": True}}
    assert [] == decode.receive(json.dumps(start))
    [opened, _audio] = decode.receive(b"\x00\x00" * 160)
    assert opened == StreamOpened("en", 16000, SessionOptions(hotwords=(Hotword("Dashwood"),), words=True))


def test_options_after_the_audio_began_are_refused() -> None:
    decode = decoder()
    decode.receive(b"\x00\x00" * 160)
    with pytest.raises(ProtocolError, match="Options come in the first frame"):
        decode.receive(json.dumps({"status": "partial", "data": "", "options": {"words": True}}))


def test_an_endpoint_without_options_refuses_them() -> None:
    decode = ClientDecoder(max_frame_bytes=65536, default_language="en", default_sample_rate=16000)
    with pytest.raises(ProtocolError, match="takes no options"):
        decode.receive(json.dumps({"status": "start", "data": "", "options": {}}))


def test_an_engine_refuses_what_it_cannot_honour() -> None:
    spec = StreamSpec("s", "en", 16000, parse({"hotwords": ["x"], "iflytek": {"pd": "edu"}}, CAPS))
    with pytest.raises(
        UnsupportedStream, match=r"The dashscope engine does not take the option.s. 'hotwords', 'iflytek\.pd'"
    ):
        refuse_unhonoured(spec, "dashscope", frozenset({"words"}))
    refuse_unhonoured(spec, "local", frozenset({"hotwords", "iflytek.pd"}))


def test_advisory_options_are_not_refused_and_cross_the_bus() -> None:
    """A dialect's hints (OpenAI's prompt) do not stop an engine that cannot use them; they travel to
    workers marked as such."""
    options = SessionOptions(prompt="Austen.", words=True, advisory=frozenset({"prompt"}))
    refuse_unhonoured(StreamSpec("s", "en", 16000, options), "iflytek", frozenset({"words"}))
    assert session_options.from_wire(json.loads(json.dumps(to_wire(options)))) == options
    with pytest.raises(ProtocolError, match="advisory"):
        parse({"advisory": ["prompt"]}, CAPS)  # a client cannot mark options optional


def test_dashscope_run_task_parameters() -> None:
    """Both transports send these (the SDK as keyword arguments it puts in the same `parameters`)."""
    options = parse(EVERYTHING | {"punctuation": True}, CAPS)
    message = json.loads(run_task("t", "paraformer-realtime-v2", 16000, task_parameters(options, "zh", ())))
    assert message["payload"]["parameters"] == {
        "format": "pcm",
        "sample_rate": 16000,
        "language_hints": ["en", "zh-CN"],
        "vocabulary_id": "vocab-abc_1",
        "disfluency_removal_enabled": True,
        "punctuation_prediction_enabled": True,
    }
    # Nothing asked: the configured hints, else the session's language, and nothing else.
    assert task_parameters(SessionOptions(), "zh", ()) == {"language_hints": ["zh"]}
    assert task_parameters(SessionOptions(), "zh", ("zh", "en")) == {"language_hints": ["zh", "en"]}


def test_iflytek_query_parameters() -> None:
    assert query_options(parse({"punctuation": False, "iflytek": {"pd": "court"}}, CAPS)) == {
        "pd": "court",
        "punc": "0",
    }
    assert query_options(parse({"punctuation": True}, CAPS)) == {}


def test_the_local_engines_whisper_inputs() -> None:
    options = parse({"hotwords": ["Dashwood", {"text": "Norland", "weight": 2.4}], "prompt": "Austen."}, CAPS)
    assert hotword_hint(options) == "Dashwood, Norland, Norland"
    assert session_prompt(options, "The family of Dashwood.") == "Austen. The family of Dashwood."
    assert session_prompt(SessionOptions(), None) is None
    assert (
        unpunctuated('"Well," said Mr. Dashwood -- it\'s well-known!')
        == "Well said Mr Dashwood it's well-known"
    )


def test_engine_protocol_v2_requests_carry_the_options() -> None:
    request = wire.Request("s", "local", "en", 16000, reply_to="g", options=to_wire(parse(EVERYTHING, CAPS)))
    assert wire.Request.decode(request.encode()) == request
    # A request from a gateway that sends none has none.
    bare = json.dumps({"session": "s", "engine": "local", "language": "en", "sample_rate": 16000}).encode()
    assert wire.Request.decode(bare).options == {}


def test_caps_come_from_the_session_config() -> None:
    from asr_actors.config import SessionConfig

    assert session_options.caps_of(SessionConfig()) == OptionCaps(100, 64, 1000)
