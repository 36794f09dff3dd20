"""The multipart/form-data upload of `POST /v1/audio/transcriptions`, parsed as it streams in by
python-multipart (the parser Starlette and FastAPI use): the file part goes to a spooled temporary file
(memory up to SPOOL_BYTES, then disk), the other fields are kept as text. Sans-IO: bytes in, a form out."""

from __future__ import annotations

import tempfile
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from asr_actors.openai_api.errors import ApiError

# A file part stays in memory up to this size, then moves to a temporary file.
SPOOL_BYTES = 1 << 20
# A text field (model, language, prompt...) larger than this is no field of this API.
MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 32


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a `Content-Type` header; ApiError 415 for anything but form-data."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(415, "Send the file as multipart/form-data (Content-Type: multipart/form-data)")
    return boundary


class TranscriptionForm:
    """Feed the body's chunks to `feed`, then `finish`; the fields are in `fields` (repeated names, such as
    `timestamp_granularities[]`, keep every value) and the file in `file`."""

    def __init__(self, boundary: bytes, max_file_bytes: int) -> None:
        self._max_file_bytes = max_file_bytes
        self.fields: dict[str, list[str]] = {}
        self.file: IO[bytes] | None = None
        self.file_bytes = 0
        self.filename = ""
        self._headers: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._name = ""
        self._value = bytearray()
        self._in_file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError(400, f"The multipart body is malformed: {exc}") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise ApiError(400, f"The multipart body is malformed: {exc}") from None
        if self.file is None:
            raise ApiError(400, "The request has no file: send it in the form field `file`", param="file")
        self.file.seek(0)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._value = bytearray()
        self._in_file = False

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode(
            "utf-8", "replace"
        )
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _disposition, options = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.file is not None:
                raise ApiError(400, "The form has more than one file", param="file")
            self._in_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 -- closed by close()
        elif sum(len(values) for values in self.fields.values()) >= MAX_FIELDS:
            raise ApiError(400, f"The form has more than {MAX_FIELDS} fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.file is not None
            self.file_bytes += end - start
            if self.file_bytes > self._max_file_bytes:
                raise ApiError(
                    413,
                    f"The file is larger than {self._max_file_bytes} bytes",
                    param="file",
                    code="file_too_large",
                )
            self.file.write(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise ApiError(400, f"The form field {self._name!r} is too long", param=self._name)

    def _part_end(self) -> None:
        if not self._in_file and self._name:
            self.fields.setdefault(self._name, []).append(self._value.decode("utf-8", "replace"))
