"""The gateway benchmark: `python -m asr_actors bench` (docs/performance.md)."""
