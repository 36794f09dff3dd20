"""Helpers for tests and benchmarks, kept off the runtime import path (as `trio.testing` is): a real
redis-server on a free port, a real `serve` process, transcript normalisation for word error rates."""
