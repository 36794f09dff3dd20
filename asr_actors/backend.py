"""Wiring, in one place: the engines, the bus, the stores and the limits a process runs with.

The gateway (`server.serve`), the engine worker and the admin commands (`apps`, `routes`, `records`) all
build what they need here and are handed it; none of them builds another's parts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs

from asr_actors.bus.base import Bus
from asr_actors.bus.memory import MemoryBus
from asr_actors.config import Config, state_path
from asr_actors.directory import (
    Directory,
    DirectoryAdmin,
    FileAdmin,
    StaticDirectory,
    read_api_key_digests,
    read_apps_file,
)
from asr_actors.engines.base import Engine
from asr_actors.limits import Limits, app_limits, memory_limits
from asr_actors.openai_api.client_secrets import ClientSecrets, MemoryClientSecrets
from asr_actors.records import RecordStore, SqliteRecordStore
from asr_actors.signing import MemoryReplayGuard, ReplayGuard


def routed_engines(config: Config) -> set[str]:
    """The engines the config routes a language to."""
    return {engine for code in config.languages if (engine := config.engine_for(code))}


def build_engines(config: Config, wanted: set[str] | None = None) -> dict[str, Engine]:
    """The engines named in `wanted` (default: those routed to), and only those: the local one loads
    ~150 MB of models."""
    from asr_actors.engines.fake import FakeEngine

    wanted = routed_engines(config) if wanted is None else wanted
    engines: dict[str, Engine] = {}
    if "local" in wanted:
        from asr_actors.engines.local import LocalEngine

        engines["local"] = LocalEngine(config.engines.local)
    if "dashscope" in wanted:
        from asr_actors.engines.dashscope import DashScopeEngine

        engines["dashscope"] = DashScopeEngine(config.engines.dashscope)
    if "iflytek" in wanted:
        from asr_actors.engines.iflytek import IflytekEngine

        engines["iflytek"] = IflytekEngine(config.engines.iflytek)
    if "fake" in wanted:
        fake = config.engines.fake
        engines["fake"] = FakeEngine(
            partial_bytes=fake.partial_bytes, sentence_bytes=fake.sentence_bytes, max_streams=fake.max_streams
        )
    if "synthetic" in wanted:
        from asr_actors.engines.synthetic import SyntheticEngine

        synthetic = config.engines.synthetic
        engines["synthetic"] = SyntheticEngine(
            partial_frames=synthetic.partial_frames,
            final_frames=synthetic.final_frames,
            max_streams=synthetic.max_streams,
        )
    return engines


# `serve --workers` hands its processes one demo secret here, so that a link any of them signs works on all.
DEMO_SECRET_ENV = "ASR_ACTORS_DEMO_SECRET"


def resolve_secrets(config: Config) -> dict[str, str]:
    """The config's apps, and those the `apps` command keeps in the apps file (embedded mode)."""
    configured = {
        appkey: app.resolve_secret(appkey) for appkey, app in config.apps.items() if app.signs_links
    }
    shared_demo = os.environ.get(DEMO_SECRET_ENV)
    demo = {config.demo.appkey: shared_demo} if shared_demo else {}
    return {**demo, **read_apps_file(state_path(config, config.server.apps_file)), **configured}


def resolve_api_keys(config: Config) -> dict[str, str]:
    """The API keys of the config's apps and of the apps file, as SHA-256 -> app."""
    from asr_actors.openai_api.keys import configured_digests

    return {**read_api_key_digests(state_path(config, config.server.apps_file)), **configured_digests(config)}


@attrs.frozen
class Backend:
    """Where sessions go and what they share: per process (memory) or across gateways (Redis)."""

    bus: Bus
    engines: dict[str, Engine]
    replay: ReplayGuard
    records: RecordStore | None
    # Per-app limits, counted in this process (memory) or across gateways (Redis).
    limits: Limits
    # Wraps the config's directory in the one all gateways share (Redis); None in embedded mode.
    shared_directory: Callable[[Directory], Directory] | None = None
    # What the `apps` and `routes` commands change.
    admin: DirectoryAdmin | None = None
    # The realtime API's client secrets: in this process, or in Redis for every gateway.
    client_secrets: ClientSecrets = attrs.field(factory=MemoryClientSecrets)


def in_process(config: Config, engines: dict[str, Engine], records: RecordStore | None = None) -> Backend:
    """The embedded backend: `engines` run as tasks of this process, links and limits kept in memory."""
    return Backend(
        MemoryBus(engines, events_capacity=config.channels.engine_events),
        engines,
        MemoryReplayGuard(),
        records,
        memory_limits(config),
        admin=FileAdmin(config),
    )


@asynccontextmanager
async def backend(config: Config) -> AsyncIterator[Backend]:
    """The in-process bus with this process's engines, replay memory and SQLite records; or the Redis bus
    to engine workers elsewhere, with the replay memory and records that all gateways share."""
    channels = config.channels
    keep = config.records
    if config.bus.kind == "memory":
        records = (
            SqliteRecordStore(str(state_path(config, keep.path)), keep.retention_days)
            if keep.enabled
            else None
        )
        yield in_process(config, build_engines(config), records)
        return
    from asr_actors.engine_protocol.connection import RedisConnection, new_process_id
    from asr_actors.engine_protocol.gateway import RedisBus
    from asr_actors.stores.redis import (
        RedisAudioQuota,
        RedisClientSecrets,
        RedisDirectory,
        RedisRecordStore,
        RedisReplayGuard,
        RedisSessionSlots,
    )

    links = config.bus
    connection = RedisConnection(
        links.url,
        new_process_id("gateway"),
        route_capacity=links.route_queue,
        check_interval=links.pubsub_check_interval,
        batch_interval=links.batch_interval,
    )
    async with (
        connection.open() as redis,
        RedisBus(redis, config.bus, events_capacity=channels.engine_events).open() as bus,
    ):
        client = redis.client
        shared = RedisRecordStore(client, keep.retention_days) if keep.enabled else None
        yield Backend(
            bus,
            {},
            RedisReplayGuard(client),
            shared,
            app_limits(
                config,
                lambda limit, per_app: RedisSessionSlots(client, limit, per_app, config.auth.shared_slot_ttl),
                RedisAudioQuota(client),
            ),
            shared_directory=lambda fallback: RedisDirectory(client, fallback),
            admin=RedisDirectory(client, StaticDirectory(config, {})),
            client_secrets=RedisClientSecrets(client),
        )
