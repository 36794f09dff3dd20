"""Session options as clients send them (protocol v1's start `options`, docs/protocol.md), checked into
`SessionOptions`: sans-IO, every mistake a `ProtocolError` 400 that names the option.

    "options": {"hotwords": ["Dashwood", {"text": "Norland Park", "weight": 2}], "words": true,
                "punctuation": false, "language_hints": ["en"], "prompt": "Sense and Sensibility",
                "dashscope": {"vocabulary_id": "vocab-abc", "disfluency_removal": true},
                "iflytek": {"pd": "medical"}}

Unknown names are refused rather than ignored, so that a client learns at once that an option it relies
on does nothing here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from asr_actors.config import SessionConfig
from asr_actors.engines.base import Hotword, SessionOptions
from asr_actors.protocol import ErrorCode, ProtocolError

MAX_LANGUAGE_HINTS = 8
MAX_HOTWORD_WEIGHT = 5.0
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")
_VOCABULARY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# iFlytek rtasr's vertical domains (`pd`), from its documentation.
IFLYTEK_DOMAINS = frozenset(
    {
        *("court", "edu", "finance", "medical", "tech", "culture", "isp", "sport"),
        *("gov", "game", "ecom", "mil", "com", "life", "ent", "car"),
    }
)


@attrs.frozen
class OptionCaps:
    """How much a session may ask for (`[session] max_hotwords`, `max_hotword_chars`, `max_prompt_chars`)."""

    max_hotwords: int = 100
    max_hotword_chars: int = 64
    max_prompt_chars: int = 1000


def caps_of(config: SessionConfig) -> OptionCaps:
    return OptionCaps(config.max_hotwords, config.max_hotword_chars, config.max_prompt_chars)


def parse(raw: object, caps: OptionCaps) -> SessionOptions:
    if not isinstance(raw, dict):
        raise _invalid("options", "an object")
    options = SessionOptions()
    extras: list[tuple[str, str | bool]] = []
    for name, value in raw.items():
        if name in _EXTRAS:
            extras.extend(_extras(name, value))
            continue
        parse_one = _OPTIONS.get(name)
        if parse_one is None:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Unknown option {name!r}")
        options = attrs.evolve(options, **{name: parse_one(value, caps)})
    return attrs.evolve(options, extras=tuple(extras))


def to_wire(options: SessionOptions) -> dict[str, Any]:
    """The options in the shape `parse` reads (engine protocol v2 carries them so to its workers)."""
    wire: dict[str, Any] = {}
    if options.hotwords:
        wire["hotwords"] = [
            hotword.text if hotword.weight == 1.0 else {"text": hotword.text, "weight": hotword.weight}
            for hotword in options.hotwords
        ]
    if options.prompt:
        wire["prompt"] = options.prompt
    if options.words:
        wire["words"] = True
    if options.punctuation is not None:
        wire["punctuation"] = options.punctuation
    if options.language_hints:
        wire["language_hints"] = list(options.language_hints)
    for name, value in options.extras:
        engine, _, key = name.partition(".")
        wire.setdefault(engine, {})[key] = value
    if options.advisory:
        wire["advisory"] = sorted(options.advisory)
    return wire


def from_wire(raw: object) -> SessionOptions:
    """`to_wire`'s object read back (a worker's side of engine protocol v2): `parse` with the default caps,
    and `advisory`, which only a gateway's dialect sets."""
    if not isinstance(raw, dict):
        raise _invalid("options", "an object")
    fields = dict(raw)
    advisory = fields.pop("advisory", [])
    if not isinstance(advisory, list) or not all(isinstance(name, str) for name in advisory):
        raise _invalid("advisory", "a list of option names")
    return attrs.evolve(parse(fields, OptionCaps()), advisory=frozenset(advisory))


def _hotwords(value: Any, caps: OptionCaps) -> tuple[Hotword, ...]:
    if not isinstance(value, list):
        raise _invalid("hotwords", "a list of phrases")
    if len(value) > caps.max_hotwords:
        raise _invalid("hotwords", f"at most {caps.max_hotwords} phrases")
    return tuple(_hotword(item, caps) for item in value)


def _hotword(item: Any, caps: OptionCaps) -> Hotword:
    weight: Any = 1.0
    if isinstance(item, dict):
        unknown = set(item) - {"text", "weight"}
        if unknown:
            raise _invalid("hotwords", f"phrases of 'text' and 'weight' (not {sorted(unknown)[0]!r})")
        text, weight = item.get("text"), item.get("weight", 1.0)
    else:
        text = item
    if not isinstance(text, str) or not text.strip():
        raise _invalid("hotwords", "phrases of text")
    if len(text) > caps.max_hotword_chars:
        raise _invalid("hotwords", f"phrases of at most {caps.max_hotword_chars} characters")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 < weight <= MAX_HOTWORD_WEIGHT
    ):
        raise _invalid("hotwords", f"weights above 0 and at most {MAX_HOTWORD_WEIGHT:g}")
    return Hotword(" ".join(text.split()), float(weight))


def _prompt(value: Any, caps: OptionCaps) -> str:
    if not isinstance(value, str):
        raise _invalid("prompt", "text")
    if len(value) > caps.max_prompt_chars:
        raise ProtocolError(
            ErrorCode.BAD_INPUT, f"Option 'prompt' has at most {caps.max_prompt_chars} characters"
        )
    return value.strip()


def _flag(name: str) -> Callable[[Any, OptionCaps], bool]:
    def parse_flag(value: Any, _caps: OptionCaps) -> bool:
        if not isinstance(value, bool):
            raise _invalid(name, "true or false")
        return value

    return parse_flag


def _language_hints(value: Any, _caps: OptionCaps) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_LANGUAGE_HINTS:
        raise _invalid("language_hints", f"a list of at most {MAX_LANGUAGE_HINTS} language codes")
    if not all(isinstance(hint, str) and _LANGUAGE.fullmatch(hint) for hint in value):
        raise _invalid("language_hints", "language codes such as 'en' or 'zh'")
    return tuple(value)


_OPTIONS: dict[str, Callable[[Any, OptionCaps], Any]] = {
    "hotwords": _hotwords,
    "prompt": _prompt,
    "words": _flag("words"),
    "punctuation": _flag("punctuation"),
    "language_hints": _language_hints,
}


def _vocabulary_id(value: Any) -> str | bool:
    if not isinstance(value, str) or not _VOCABULARY_ID.fullmatch(value):
        raise _invalid("dashscope.vocabulary_id", "the id of a DashScope vocabulary")
    return value


def _disfluency_removal(value: Any) -> str | bool:
    if not isinstance(value, bool):
        raise _invalid("dashscope.disfluency_removal", "true or false")
    return value


def _domain(value: Any) -> str | bool:
    if value not in IFLYTEK_DOMAINS:
        raise _invalid("iflytek.pd", f"one of {', '.join(sorted(IFLYTEK_DOMAINS))}")
    return str(value)


# An engine's own options, by engine and name; each is checked here, so that an engine gets only values
# its service accepts.
_EXTRAS: dict[str, dict[str, Callable[[Any], str | bool]]] = {
    "dashscope": {"vocabulary_id": _vocabulary_id, "disfluency_removal": _disfluency_removal},
    "iflytek": {"pd": _domain},
}


def _extras(engine: str, value: Any) -> list[tuple[str, str | bool]]:
    if not isinstance(value, dict):
        raise _invalid(engine, f"an object of {engine}'s options")
    known = _EXTRAS[engine]
    parsed: list[tuple[str, str | bool]] = []
    for name, item in value.items():
        check = known.get(name)
        if check is None:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"Unknown option '{engine}.{name}'")
        parsed.append((f"{engine}.{name}", check(item)))
    return parsed


def _invalid(name: str, expected: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_INPUT, f"Option {name!r} takes {expected}")
