"""The page in a real headless Chromium, its microphone fed from a WAV file, against a real `serve`.

Chromium is Debian's (`.ci/run` installs it); Playwright only drives it and never downloads a browser.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import attrs
import pytest
import trio

from asr_actors.subprocess_server import running_server

DATA = Path(__file__).resolve().parent.parent / "data" / "librivox"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
SPEECH = ["sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0880"]


@attrs.frozen
class PageRun:
    # Each change of the transcript as (class, text) per line, in the order the page showed them.
    snapshots: list[list[tuple[str, str]]]
    final_status: str
    screenshot: Path


def microphone_file(tmp_path: Path, rate: int) -> Path:
    """Two LibriVox sentences at `rate`, a clear pause between them and silence around them.

    The trailing silence matters: after the file ends Chromium repeats its last 10 ms buffer.
    """
    out = tmp_path / f"speech-{rate}.wav"
    pause = tmp_path / "pause.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(pause), "trim", "0", "1"], check=True
    )
    first, second = (str(DATA / f"{name}.wav") for name in SPEECH)
    subprocess.run(
        ["sox", first, str(pause), second, "-r", str(rate), str(out), "pad", "0.5", "3"], check=True
    )
    return out


def drive_page(url: str, wav: Path, screenshot: Path) -> PageRun:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.click("#start")
            page.wait_for_function("document.getElementById('stop').disabled === false", timeout=15000)
            snapshots: list[list[tuple[str, str]]] = []
            deadline = time.monotonic() + 14
            while time.monotonic() < deadline:
                lines = page.eval_on_selector_all(
                    "#transcript p", "els => els.map(e => [e.className, e.textContent])"
                )
                current = [(kind, text) for kind, text in lines]
                if not snapshots or snapshots[-1] != current:
                    snapshots.append(current)
                time.sleep(0.1)
            page.click("#stop")
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('ended')"
                " || document.getElementById('status').classList.contains('error')",
                timeout=30000,
            )
            snapshots.append(
                [
                    (k, t)
                    for k, t in page.eval_on_selector_all(
                        "#transcript p", "els => els.map(e => [e.className, e.textContent])"
                    )
                ]
            )
            status = page.inner_text("#status")
            page.screenshot(path=str(screenshot), full_page=True)
            return PageRun(snapshots, status, screenshot)
        finally:
            browser.close()


async def test_page_transcribes_the_microphone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Start → a partial grows in place → a final replaces it → next sentence on a new line → Stop → end."""
    config = tmp_path / "config.toml"
    config.write_text("")
    ARTIFACTS.mkdir(exist_ok=True)
    wav = microphone_file(tmp_path, 48000)
    async with running_server(config) as (url, _pid):
        run = await trio.to_thread.run_sync(drive_page, url, wav, ARTIFACTS / "page-transcript.png")
    with capsys.disabled():
        print(f"\n[browser] screenshot: {run.screenshot}")
    assert "Session ended." == run.final_status
    first_line_partials = [s[0][1] for s in run.snapshots if s and s[0][0] == "partial"]
    assert len(first_line_partials) >= 3, "the first sentence should grow through several partials"
    final_lines = run.snapshots[-1]
    assert 2 == len(final_lines), final_lines
    assert all(kind == "" for kind, _ in final_lines), "every line ends as a final"
    assert "dashwood" in final_lines[0][1].lower()
    assert "young man" in final_lines[1][1].lower()
    # The first line was a partial before it became final, on the same line (not a new one).
    became_final = next(i for i, s in enumerate(run.snapshots) if s and s[0][0] == "")
    assert all(len(s) == 1 for s in run.snapshots[:became_final] if s)
