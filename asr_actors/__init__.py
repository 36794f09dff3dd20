"""asr-actors: a streaming speech-recognition gateway built as Trio actors."""

__version__ = "0.1.0"
