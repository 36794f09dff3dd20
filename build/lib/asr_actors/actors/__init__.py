"""One actor per module, each a single `run(...)` coroutine taking its channels and config values."""
