"""Headless Debian Chromium with a fake microphone, driven by Playwright (which never downloads one)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
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
# Records every AudioContext the page makes, so a test can suspend capture as a stalled device would.
RECORD_AUDIO_CONTEXTS = """
(() => {
  const Original = window.AudioContext;
  window.__audioContexts = [];
  window.AudioContext = class extends Original {
    constructor(...args) { super(...args); window.__audioContexts.push(this); }
  };
})();
"""
LINES_JS = "els => els.map(e => [e.className, e.querySelector('.text').textContent])"


@contextmanager
def open_page(
    url: str, microphone: Path, *, viewport: dict[str, int] | None = None, websockets: list[str] | None = None
) -> Iterator[Page]:
    """A page at `url` whose microphone plays `microphone` once; `websockets` collects opened socket URLs."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*FLAGS, f"--use-file-for-fake-audio-capture={microphone}%noloop"]
        )
        try:
            context = browser.new_context(viewport=viewport or {"width": 1280, "height": 720})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.rstrip("/"))
            page = context.new_page()
            page.add_init_script(RECORD_AUDIO_CONTEXTS)
            if websockets is not None:
                page.on("websocket", lambda ws: websockets.append(ws.url))
            page.goto(url)
            yield page
        finally:
            browser.close()


def lines(page: Page) -> list[tuple[str, str]]:
    """The transcript as (class, text) per line: class "partial" while a sentence grows, "" once final."""
    return [(kind, text) for kind, text in page.eval_on_selector_all("#transcript p", LINES_JS)]


def wait_until_idle(page: Page, timeout_ms: int = 30000) -> str:
    """Wait until the session is over (Start enabled again); return the status line."""
    page.wait_for_function(
        "!document.getElementById('start').disabled && document.getElementById('stop').disabled",
        timeout=timeout_ms,
    )
    return page.inner_text("#status")


def buttons(page: Page) -> tuple[bool, bool]:
    """(Start enabled, Stop enabled)."""
    return page.is_enabled("#start"), page.is_enabled("#stop")


def speech_file(folder: Path, sources: list[Path], rate: int, pause_s: float = 1.0) -> Path:
    """`sources` joined by pauses, resampled to `rate`, silence around (Chromium repeats the last 10 ms)."""
    out = folder / f"speech-{rate}.wav"
    pause = folder / "pause.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(pause), "trim", "0", str(pause_s)], check=True
    )
    joined: list[str] = []
    for source in sources:
        joined += [str(source), str(pause)]
    subprocess.run(["sox", *joined[:-1], "-r", str(rate), str(out), "pad", "0.5", "3"], check=True)
    return out
