"""The OpenAI-compatible speech-to-text API (docs/openai.md): code written for OpenAI's `audio.transcriptions`
runs against this gateway by changing its base URL, on any engine behind it.

- `errors`: errors as OpenAI shapes them; `keys`: `Authorization: Bearer` API keys per app;
- `form`: the multipart upload, parsed as it streams (python-multipart);
- `formats`: the answer in each `response_format`;
- `transcriptions`: `POST /v1/audio/transcriptions`, a file through an engine as a session.
"""
