"""asr-actors: a streaming speech-recognition gateway built as Trio actors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asr-actors")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
