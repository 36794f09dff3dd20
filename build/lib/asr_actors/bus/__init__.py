"""Buses connect a session's relay to an engine stream: in-process here, Redis for scale-out."""
