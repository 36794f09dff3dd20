"""The page in Debian's Firefox ESR (headless), driven over WebDriver BiDi by puppeteer-core from npm (which
downloads no browser: `tests/e2e/firefox/`), its microphone replaced by known speech played from an
AudioBuffer, at 44.1 and 48 kHz, against a real `serve` with the real local engine — as the Chromium tests
do for Chromium. Firefox is the browser that refuses AudioContext({sampleRate}) for microphone streams,
which is why the page resamples in its worklet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jiwer
import pytest
import trio

from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize
from tests.e2e.test_browser import WER_BOUND, microphone, reference, write_config

DRIVER = Path(__file__).resolve().parent / "firefox" / "page.mjs"
FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
GUARD = 120


@pytest.mark.parametrize("rate", [48000, 44100])
async def test_the_page_in_firefox_esr(tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: int) -> None:
    speech = microphone(tmp_path, 16000)
    with trio.fail_after(GUARD):
        async with running_server(write_config(tmp_path)) as (url, _pid):
            done = await trio.run_process(
                [
                    "node",
                    str(DRIVER),
                    "--url",
                    url,
                    "--audio",
                    str(speech),
                    "--rate",
                    str(rate),
                    "--finals",
                    "2",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={"FIREFOX": FIREFOX, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            )
    assert 0 == done.returncode, done.stderr.decode()[-2000:]
    seen = json.loads(done.stdout.decode().splitlines()[-1])
    finals = [text for kind, text in seen["lines"] if kind == ""]
    wer = jiwer.wer(" ".join(reference()), " ".join(normalize(text) for text in finals))
    with capsys.disabled():
        print(f"\n[firefox] {seen['browser']} at {seen['contextRate']} Hz: WER {wer:.3f}, {finals}")
    assert rate == seen["contextRate"]
    assert "Session ended." == seen["status"]
    assert 2 == len(finals), seen["lines"]
    assert wer < WER_BOUND, finals
