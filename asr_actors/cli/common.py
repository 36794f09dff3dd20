"""What the commands share: the config and logging options, the app secret from the environment."""

from __future__ import annotations

import argparse
import os

from asr_actors import logs

SECRET_ENV = "ASR_ACTORS_SECRET"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_config(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", help="TOML config file (default: $ASR_ACTORS_CONFIG, else built-in defaults)"
    )


def add_logging(command: argparse.ArgumentParser) -> None:
    command.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    command.add_argument(
        "--log-format", default="text", choices=logs.FORMATS, help="json: one JSON object per line"
    )


def secret(args: argparse.Namespace) -> str | None:
    """The app secret: --secret, else $ASR_ACTORS_SECRET (which keeps it out of the shell's history)."""
    given: str | None = args.secret or os.environ.get(SECRET_ENV)
    return given
