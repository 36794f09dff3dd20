"""The wheel a user installs: one top-level package, the page inside it, an `asr-actors` command that
serves the page from an empty folder.

The wheel is built from this checkout (`pip wheel`, no build isolation: nothing is downloaded) and
installed with `--target` into a scratch folder put first on PYTHONPATH, so that the installed copy,
not this checkout, is what runs; its dependencies come from the test environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import trio

from asr_actors import __version__
from tests.test_http import http_get

ROOT = Path(__file__).resolve().parent.parent.parent
GUARD = 180


def build_and_install(scratch: Path) -> tuple[Path, Path]:
    """The wheel, and the folder it is installed into."""
    wheels = scratch / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        timeout=GUARD,
    )
    [wheel] = wheels.glob("asr_actors-*.whl")
    target = scratch / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=GUARD,
    )
    return wheel, target


async def test_the_wheel_serves_the_page_from_an_empty_folder(tmp_path: Path) -> None:
    """Everything under `asr_actors/` (engines and the page included, no stray top-level package, no
    node_modules); `asr-actors --version`; `asr-actors serve` from an empty folder answers the page."""
    wheel, target = build_and_install(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {"asr_actors", f"asr_actors-{__version__}.dist-info"} == top_level
    for expected in ("asr_actors/web/index.html", "asr_actors/web/app.js", "asr_actors/engines/base.py"):
        assert expected in names
    assert not any("node_modules" in name or "node-echo" in name for name in names)
    entry_points = (
        zipfile.ZipFile(wheel).read(f"asr_actors-{__version__}.dist-info/entry_points.txt").decode()
    )
    assert "asr-actors = asr_actors.__main__:main" in entry_points

    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "fake.toml"
    config.write_text(
        '[engines]\ndefault = "fake"\n[languages.en]\nengine = "fake"\n[records]\nenabled = false\n'
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = str(target / "bin" / "asr-actors")
    version = await trio.run_process([command, "--version"], cwd=empty, env=env, capture_stdout=True)
    assert f"asr-actors {__version__}" == version.stdout.decode().strip()
    located = await trio.run_process(
        [sys.executable, "-c", "import asr_actors; print(asr_actors.__file__)"],
        cwd=empty,
        env=env,
        capture_stdout=True,
    )
    assert located.stdout.decode().startswith(str(target)), located.stdout

    with trio.fail_after(GUARD):
        process = await trio.lowlevel.open_process(
            [command, "serve", "--config", str(config), "--port", "0"],
            cwd=empty,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert process.stdout is not None
            first = b""
            while b"\n" not in first:
                chunk = await process.stdout.receive_some()
                assert chunk, "the server exited"
                first += chunk
            match = re.search(rb"http://127\.0\.0\.1:(\d+)/", first)
            assert match is not None, first
            port = int(match.group(1))
            base = f"http://127.0.0.1:{port}/"
            status, _, body = await http_get(base, "/")
            assert (200, True) == (status, b'id="transcript"' in body)
            assert 200 == (await http_get(base, "/app.js"))[0]
        finally:
            process.terminate()
            await process.wait()
            await process.stdout.aclose()  # type: ignore[union-attr]
    assert [] == list(empty.iterdir()), "serving wrote nothing into the folder it was started from"
