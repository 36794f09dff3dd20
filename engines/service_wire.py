"""What the native engines' services say, in common (sans-IO).

The wire modules of DashScope (`dashscope_wire.py`) and iFlytek (`iflytek_wire.py`) parse a service's
messages into these and the sentence events of `base.py`; `upstream.run_session` acts on them, and turns
a `Failed` or a `WireError` into the session's `EngineError` there, once for every service.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Started:
    """The service has started the task: audio may flow. `sid`: the service's own id for it, if any."""

    sid: str = ""


@attrs.frozen
class Finished:
    """The service has sent its last result."""


@attrs.frozen
class Failed:
    """The service reports a failure: its code and text, and the reason a client is told."""

    code: str
    detail: str
    reason: str


class WireError(Exception):
    """The service sent something that is not its protocol."""
