"""Engine protocol v2 (docs/engine-protocol.md): gateways and engine workers over Redis, in one package.

- `wire`: the records, requests and key names, sans-IO (what both sides say).
- `connection`: one process's link (`RedisConnection`): the `publisher` (batched PUBLISH and LPUSH) and
  the `inbox` (the process's pub/sub channel, routed to placements, with its watchdog).
- `liveness`: heartbeats and the watch on the peers' liveness keys, both ways.
- `gateway`: the gateway's side, the Redis `Bus` (placement, failover, replay).
- `claims`: the worker's side (taking requests, a claimed session's audio and results); the worker
  process around it is `asr_actors.worker`, and `asr_actors.tools.conformance` checks any worker.

Redis itself is reached through `asr_actors.redis_client`, the one module that imports coredis.
"""
