"""The page in a real headless Chromium, its microphone fed from a WAV file, against a real `serve`.

Chromium is Debian's (`.ci/run` installs it); Playwright only drives it. Recognition tests use the real
local engine; the error-path tests use the scripted fake engine, since they test the page, not the model.
Screenshots go to tests/artifacts/ (ignored by git); their paths are printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import jiwer
import numpy as np
import numpy.typing as npt
import pytest
import trio
from playwright.sync_api import Page

from asr_actors.testing.fake_dashscope import FakeDashScope, Switches
from asr_actors.testing.fake_dashscope import text as fake_text
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize
from tests.e2e.browser import buttons, lines, open_page, speech_file, wait_until_idle

DATA = Path(__file__).resolve().parent.parent / "data" / "librivox"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SENTENCES = ["sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0880"]
FAKE_ENGINE = '[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n'
# Measured 6.7 % at both rates; the bound leaves room for model updates.
WER_BOUND = 0.15


def reference() -> list[str]:
    transcripts = dict(
        line.split("\t", 1) for line in (DATA / "transcripts.tsv").read_text().splitlines() if line.strip()
    )
    return [normalize(transcripts[name]) for name in SENTENCES]


def write_config(folder: Path, text: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def microphone(folder: Path, rate: int = 48000) -> Path:
    return speech_file(folder, [DATA / f"{name}.wav" for name in SENTENCES], rate)


def screenshot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n[browser] screenshot: {path}")


def record_until(page: Page, done: str, timeout_s: float = 30) -> list[list[tuple[str, str]]]:
    """Every distinct transcript state until the JavaScript condition `done` holds."""
    states: list[list[tuple[str, str]]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The condition first, then the snapshot: the last state returned always satisfies it.
        reached = page.evaluate(done)
        current = lines(page)
        if not states or states[-1] != current:
            states.append(current)
        if reached:
            return states
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout_s} s: {done}; last transcript {states[-1:]}")


async def test_live_transcript_grows_in_place_and_keeps_the_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Start → recording → a partial grows and becomes final on the same line → the next sentence on a
    new line → Stop in the middle of it → its tail still arrives as a final → session ended."""
    wav = microphone(tmp_path)

    def drive(url: str) -> None:
        with open_page(url, wav) as page:
            page.click("#start")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Recording')")
            assert (False, True) == buttons(page)
            second_line_started = "document.querySelectorAll('#transcript p').length === 2"
            states = record_until(page, second_line_started)
            page.click("#stop")
            assert "Session ended." == wait_until_idle(page)
            final = lines(page)
            screenshot(page, "page-transcript.png", capsys)
        first_line = [state[0] for state in states if state]
        assert sum(1 for kind, _ in first_line if kind == "partial") >= 3, (
            "the first line grew through partials"
        )
        assert all(len(state) <= 1 for state in states[:-1]), "the first sentence stayed on one line"
        assert "" == first_line[-1][0]
        assert "partial" == states[-1][1][0], "Stop was pressed while the second sentence was in progress"
        assert 2 == len(final), final
        assert all(kind == "" and text for kind, text in final), final
        assert "dashwood" in final[0][1].lower()

    async with running_server(write_config(tmp_path)) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


async def test_48k_and_44k_capture_give_the_same_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worklet resamples the device rate to 16 kHz: 48 kHz and 44.1 kHz WAVs give the same WER."""
    expected = " ".join(reference())
    error_rates: dict[int, float] = {}

    def drive(url: str, rate: int) -> None:
        with open_page(url, microphone(tmp_path, rate)) as page:
            page.click("#start")
            record_until(page, "document.querySelectorAll('#transcript p:not(.partial)').length === 2")
            page.click("#stop")
            assert "Session ended." == wait_until_idle(page)
            heard = " ".join(normalize(text) for _, text in lines(page))
        error_rates[rate] = jiwer.wer(expected, heard)

    async with running_server(write_config(tmp_path)) as (url, _pid):
        for rate in (48000, 44100):
            await trio.to_thread.run_sync(drive, url, rate)
    with capsys.disabled():
        print(f"\n[browser] WER by capture rate: {error_rates}")
    assert all(rate < WER_BOUND for rate in error_rates.values()), error_rates
    assert abs(error_rates[48000] - error_rates[44100]) <= 0.1, error_rates


async def test_expired_link_is_renewed_once(tmp_path: Path) -> None:
    """The page's prefetched link expires while it sits open: 401, one fresh link, recording goes on."""
    config = write_config(tmp_path, FAKE_ENGINE + "[auth]\nsurvival_time = 1.0\nclock_skew = 1.0\n")
    wav = microphone(tmp_path)
    sockets: list[str] = []

    def drive(url: str) -> None:
        with open_page(url, wav, websockets=sockets) as page:
            time.sleep(4)  # the link fetched at page load is now past date + survival + skew
            page.click("#start")
            page.wait_for_function("document.querySelectorAll('#transcript p').length > 0", timeout=15000)
            assert "Recording" in page.inner_text("#status")
            page.click("#stop")
            assert "Session ended." == wait_until_idle(page)
        assert 2 == len(sockets), sockets
        assert sockets[0] != sockets[1]

    async with running_server(config) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


async def test_idle_timeout_is_explained(tmp_path: Path) -> None:
    """Capture stalls (audio context suspended, as a sleeping device would): 408 shown, buttons reset."""
    config = write_config(tmp_path, FAKE_ENGINE + "[session]\nidle_timeout = 2.0\n")
    wav = microphone(tmp_path)

    def drive(url: str) -> None:
        with open_page(url, wav) as page:
            page.click("#start")
            page.wait_for_function("document.querySelectorAll('#transcript p').length > 0", timeout=15000)
            page.evaluate("window.__audioContexts.forEach(context => context.suspend())")
            status = wait_until_idle(page, timeout_ms=15000)
            assert "The session timed out: Connection Timeout (408)." == status
            assert (True, False) == buttons(page)
            assert page.eval_on_selector("#status", "e => e.classList.contains('error')")

    async with running_server(config) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


async def test_server_closing_mid_session_is_explained(tmp_path: Path) -> None:
    """The server dies while recording: the page says the connection was lost and resets its buttons."""
    wav = microphone(tmp_path)

    def drive(url: str, pid: int) -> None:
        with open_page(url, wav) as page:
            page.click("#start")
            page.wait_for_function("document.querySelectorAll('#transcript p').length > 0", timeout=15000)
            os.kill(pid, signal.SIGKILL)
            status = wait_until_idle(page, timeout_ms=15000)
            assert status.startswith("The connection to the server was lost"), status
            assert (True, False) == buttons(page)

    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, server):
        await trio.to_thread.run_sync(drive, url, server.pid)


async def test_unreachable_server_is_explained(tmp_path: Path) -> None:
    """The server is gone before Start: a human message, and Start works again afterwards."""
    wav = microphone(tmp_path)

    def drive(url: str, pid: int) -> None:
        with open_page(url, wav) as page:
            page.wait_for_timeout(300)  # the page's link prefetch
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            page.click("#start")
            assert "Could not start: cannot reach the server." == wait_until_idle(page, timeout_ms=15000)
            assert (True, False) == buttons(page)

    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, server):
        await trio.to_thread.run_sync(drive, url, server.pid)


async def test_start_twice_opens_one_socket(tmp_path: Path) -> None:
    """Clicking Start twice in a row, or double-clicking it, never opens a second socket."""
    wav = microphone(tmp_path)
    sockets: list[str] = []

    def drive(url: str) -> None:
        with open_page(url, wav, websockets=sockets) as page:
            page.dblclick("#start")
            page.evaluate(
                "() => { const start = document.getElementById('start'); start.click(); start.click(); }"
            )
            page.wait_for_function("document.querySelectorAll('#transcript p').length > 0", timeout=15000)
            page.click("#stop")
            wait_until_idle(page)
        assert 1 == len(sockets), sockets

    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


async def test_phone_keyboard_and_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a phone-sized viewport: no sideways scrolling; Start and Stop by keyboard; Copy copies the lines."""
    wav = microphone(tmp_path)

    def drive(url: str) -> None:
        with open_page(url, wav, viewport={"width": 390, "height": 844}) as page:
            assert page.evaluate(
                "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
            )
            assert "polite" == page.get_attribute("#transcript", "aria-live")
            page.keyboard.press("Tab")
            assert "language" == page.evaluate("document.activeElement.id")
            page.keyboard.press("Tab")
            assert "start" == page.evaluate("document.activeElement.id")
            page.keyboard.press("Enter")
            page.wait_for_function("document.activeElement.id === 'stop'", timeout=15000)
            page.wait_for_function("document.querySelectorAll('#transcript p').length >= 2", timeout=15000)
            assert page.evaluate("document.getElementById('level').value > 0")
            page.keyboard.press("Enter")
            assert "Session ended." == wait_until_idle(page)
            assert 0 == page.evaluate("document.getElementById('level').value")
            page.click("#copy")
            copied = page.evaluate("navigator.clipboard.readText()")
            assert "\n".join(text for _, text in lines(page)) == copied
            assert page.evaluate(
                "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
            )
            screenshot(page, "page-phone.png", capsys)

    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


async def test_chinese_through_the_page_and_the_dashscope_sdk(tmp_path: Path) -> None:
    """The language selector routes to DashScope: page → gateway → the real SDK → a fake DashScope server.

    The key comes from the environment as in production; the fake's scripted Chinese text shows on the page.
    """
    wav = microphone(tmp_path)
    async with trio.open_nursery() as nursery:
        fake = FakeDashScope(Switches(api_key="page-test-key"))
        url = await nursery.start(fake.serve)
        # The demo app uses the paid service only when the operator names it ([demo] engines).
        config = write_config(
            tmp_path,
            f'[demo]\nengines = ["local", "dashscope"]\n'
            f'[engines.dashscope]\nurl = "{url}"\napi_key_env = "ASR_PAGE_TEST_KEY"\n',
        )

        def drive(page_url: str) -> None:
            with open_page(page_url, wav) as page:
                page.wait_for_function("document.querySelector('#language option[value=zh]') !== null")
                assert not page.eval_on_selector("#language option[value=zh]", "o => o.disabled")
                page.select_option("#language", "zh")
                page.click("#start")
                page.wait_for_function("document.querySelectorAll('#transcript p:not(.partial)').length > 0")
                page.click("#stop")
                assert "Session ended." == wait_until_idle(page)
                first = lines(page)[0][1]
                assert first.startswith(fake_text(0, 10)), first
                assert page.is_disabled("#language") is False

        async with running_server(config, env={"ASR_PAGE_TEST_KEY": "page-test-key"}) as (page_url, _pid):
            await trio.to_thread.run_sync(drive, page_url)
        nursery.cancel_scope.cancel()
    assert 1 == fake.stats.tasks_finished


async def test_unconfigured_language_is_shown_unavailable(tmp_path: Path) -> None:
    """Without a DashScope key the Chinese option is listed but disabled, with the reason."""
    wav = microphone(tmp_path)

    def drive(url: str) -> None:
        with open_page(url, wav) as page:
            page.wait_for_function("document.querySelector('#language option[value=zh]') !== null")
            option = page.eval_on_selector(
                "#language option[value=zh]", "o => [o.disabled, o.textContent, o.title]"
            )
            assert [
                True,
                "中文 Chinese (unavailable)",
                "DashScope needs an API key in $DASHSCOPE_API_KEY",
            ] == option
            assert "en" == page.eval_on_selector("#language", "s => s.value")

    async with running_server(write_config(tmp_path), env={"DASHSCOPE_API_KEY": ""}) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)


def tone_file(folder: Path, frequency: int, rate: int, seconds: float = 3.0) -> Path:
    """A sine tone at -6 dBFS made by sox, silence around it."""
    path = folder / f"tone-{frequency}-{rate}.wav"
    tone = ["synth", str(seconds), "sine", str(frequency), "vol", "0.5", "pad", "0.5", "3"]
    subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path), *tone], check=True)
    return path


def sent_audio(url: str, microphone_file: Path) -> npt.NDArray[np.float64]:
    """The 16 kHz audio (full scale 1.0) the page sent while the microphone played `microphone_file`."""
    frames: list[bytes] = []
    with open_page(url, microphone_file) as page:
        page.on(
            "websocket",
            lambda ws: ws.on(
                "framesent", lambda payload: frames.append(payload) if isinstance(payload, bytes) else None
            ),
        )
        page.click("#start")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Recording')")
        page.wait_for_timeout(2500)
        page.click("#stop")
        wait_until_idle(page)
    return np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64) / 32768.0


def loudest_level(samples: npt.NDArray[np.float64]) -> float:
    """The RMS (dBFS) of the loudest 100 ms."""
    loudest = max(np.sqrt(np.mean(samples[i : i + 1600] ** 2)) for i in range(0, len(samples) - 1600, 1600))
    return float(20 * np.log10(max(loudest, 1e-9)))


def tone_level(samples: npt.NDArray[np.float64], frequency: float) -> float:
    """The level (dB, relative) of the spectrum's peak within 100 Hz of `frequency`. A spectral line, not a
    window's RMS: a click (an audio glitch on a busy machine) spreads thinly over every frequency and must
    not pass for a tone that came through."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    bins = np.fft.rfftfreq(len(samples), 1 / 16000)
    near = spectrum[np.abs(bins - frequency) <= 100]
    return float(20 * np.log10(max(float(near.max()), 1e-12)))


@pytest.mark.parametrize("rate", [48000, 44100])
async def test_a_tone_above_8khz_does_not_come_through(tmp_path: Path, rate: int) -> None:
    """The worklet's low-pass before decimation: a 1 kHz tone arrives at its level; a 10 kHz tone, which
    16 kHz audio cannot hold and a plain decimator would fold to 6 kHz, arrives 40 dB or more below it
    (compared as spectral lines: the 1 kHz line against the 6 kHz line the fold would make)."""
    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, _pid):
        passed = await trio.to_thread.run_sync(sent_audio, url, tone_file(tmp_path, 1000, rate))
        stopped = await trio.to_thread.run_sync(sent_audio, url, tone_file(tmp_path, 10000, rate))
    assert -12 < loudest_level(passed) < -6, loudest_level(passed)  # -9 dBFS RMS for a -6 dBFS sine
    assert tone_level(stopped, 6000) < tone_level(passed, 1000) - 40, (
        tone_level(passed, 1000),
        tone_level(stopped, 6000),
    )


async def test_download_and_clear(tmp_path: Path) -> None:
    """After a session: each line shows its time; Download .txt and .srt give the finals (one SRT cue per
    sentence with its times); Clear empties the transcript and disables the buttons that need one."""
    wav = microphone(tmp_path)

    def drive(url: str) -> None:
        with open_page(url, wav) as page:
            page.click("#start")
            page.wait_for_function("document.querySelectorAll('#transcript p:not(.partial)').length >= 2")
            page.click("#stop")
            wait_until_idle(page)
            finals = [text for kind, text in lines(page) if kind == ""]
            times = page.eval_on_selector_all("#transcript p time", "els => els.map(e => e.textContent)")
            with page.expect_download() as as_txt:
                page.click("#download-txt")
            with page.expect_download() as as_srt:
                page.click("#download-srt")
            txt = Path(as_txt.value.path()).read_text()
            srt = Path(as_srt.value.path()).read_text()
            assert (as_txt.value.suggested_filename, as_srt.value.suggested_filename) == (
                "transcript.txt",
                "transcript.srt",
            )
            page.click("#clear")
            after = (lines(page), page.is_enabled("#download-srt"), page.is_enabled("#clear"))
        assert ["0:00", "0:01"] == times[:2]  # the fake engine: a sentence per second of audio
        assert "".join(f"{text}\n" for text in finals) == txt
        assert srt.startswith(f"1\n00:00:00,000 --> 00:00:01,000\n{finals[0]}\n\n2\n00:00:01,000 --> ")
        assert ([], False, False) == after

    async with running_server(write_config(tmp_path, FAKE_ENGINE)) as (url, _pid):
        await trio.to_thread.run_sync(drive, url)
