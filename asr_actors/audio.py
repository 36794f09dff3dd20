"""Audio as clients send it, turned into what the engines take: 16-bit mono PCM at the engine's rate.

Files are decoded and resampled by PyAV (FFmpeg's decoders and libswresample), which faster-whisper
brings already: WAV, FLAC, MP3, OGG/Opus, WebM, M4A and the rest FFmpeg reads. A stream's rate is
converted by the same resampler, one per stream, so that its filter state carries across frames. G.711
(μ-law and A-law, 8 kHz telephony) is decoded here by the standard's formula.
"""

from __future__ import annotations

import os
from typing import IO

import av
import av.error
import numpy as np
import numpy.typing as npt

ENGINE_RATE = 16000


class UnreadableAudio(Exception):
    """The bytes are no audio this server can decode (the message says why)."""


class AudioTooLong(Exception):
    """The audio lasts longer than the server takes in one request."""


def decode_file(
    source: str | os.PathLike[str] | IO[bytes], *, max_seconds: float, rate: int = ENGINE_RATE
) -> bytes:
    """The first audio stream of a file as 16-bit mono PCM at `rate`. UnreadableAudio if it has none or
    it does not decode; AudioTooLong past `max_seconds` (checked as it decodes, never held whole first)."""
    limit = int(max_seconds * rate) * 2
    pcm = bytearray()
    try:
        with av.open(source, mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise UnreadableAudio("the file holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(streams[0]):
                for converted in resampler.resample(frame):
                    pcm += converted.to_ndarray().tobytes()
                if len(pcm) > limit:
                    raise AudioTooLong(f"the audio is longer than {max_seconds:g} s")
            for converted in resampler.resample(None):
                pcm += converted.to_ndarray().tobytes()
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableAudio(f"the file does not decode as audio ({exc})") from None
    return bytes(pcm[:limit])


class Resampler:
    """One stream's 16-bit mono PCM from `source` Hz to `target` Hz, as its pieces arrive."""

    def __init__(self, source: int, target: int = ENGINE_RATE) -> None:
        self.source = source
        self.target = target
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
        self._odd = b""  # a byte of a sample split between two pieces

    def feed(self, pcm: bytes) -> bytes:
        if self.source == self.target:
            return pcm
        pcm = self._odd + pcm
        whole = len(pcm) - len(pcm) % 2
        pcm, self._odd = pcm[:whole], pcm[whole:]
        if not pcm:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.source
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))

    def flush(self) -> bytes:
        """What the filter still holds, at the end of the stream."""
        if self.source == self.target:
            return b""
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(None))


def _ulaw_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + 0x84) << exponent
    return np.where(codes & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


# ITU-T G.711: each byte one 8 kHz sample, decoded by table.
ULAW = _ulaw_table()
ALAW = _alaw_table()


def g711_to_pcm(data: bytes, table: npt.NDArray[np.int16]) -> bytes:
    """G.711 bytes (`ULAW` or `ALAW`) as 16-bit PCM at the same rate (8 kHz)."""
    decoded: bytes = table[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()
    return decoded
