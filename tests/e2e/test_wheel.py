"""The wheel a user installs: one top-level package, the page inside it, its licence, and every command of
`asr-actors` working from it outside any checkout: `serve` answers the page from an empty folder, `bench`
measures, `conformance` checks a worker started from the wheel.

The wheel is built from this checkout (`pip wheel`, no build isolation: nothing is downloaded) and
installed with `--target` into a scratch folder put first on PYTHONPATH, so that the installed copy,
not this checkout, is what runs; its dependencies come from the test environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import trio

from asr_actors import __version__
from asr_actors.testing.redis_server import redis_server
from tests.e2e.test_scale_out import workers_announced
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
    assert "asr-actors = asr_actors.cli:main" in entry_points
    for tool in (
        "asr_actors/tools/__init__.py",
        "asr_actors/tools/conformance.py",
        "asr_actors/tools/benchmark/reference_relay.py",
        "asr_actors/testing/__init__.py",
        "asr_actors/testing/fake_dashscope.py",
        f"asr_actors-{__version__}.dist-info/licenses/LICENSE",
        f"asr_actors-{__version__}.dist-info/licenses/THIRD-PARTY-NOTICES.md",
    ):
        assert tool in names
    metadata = zipfile.ZipFile(wheel).read(f"asr_actors-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()

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


COMMANDS = ("serve", "worker", "sign", "records", "conformance", "apps", "routes", "transcribe", "bench")


async def test_every_command_runs_from_the_installed_wheel(tmp_path: Path) -> None:
    """From an empty folder, with only the installed wheel importable as asr_actors: every command's
    `--help`; a real `bench` (in-process bus, 2 streams, with the reference relay beside it); a worker
    started from the wheel passes a real `conformance` run from the wheel on a real redis-server."""
    _wheel, target = build_and_install(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = str(target / "bin" / "asr-actors")
    with trio.fail_after(GUARD * 2):
        for name in COMMANDS:
            shown = await trio.run_process([command, name, "--help"], cwd=empty, env=env, capture_stdout=True)
            assert shown.stdout.decode().startswith(f"usage: asr-actors {name}")
        bench = await trio.run_process(
            [command, "bench", "--streams", "2", "--duration", "1", "--baseline"],
            cwd=empty,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
        )
        table = bench.stdout.decode()
        assert "| sessions ok / started | 2 / 2 | 2 / 2 |" in table, table
        async with redis_server(tmp_path) as redis:
            config = tmp_path / "worker.toml"
            config.write_text(f'[bus]\nkind = "redis"\nurl = "{redis.url}"\n')
            worker = await trio.lowlevel.open_process(
                [command, "worker", "--engine", "fake", "--config", str(config)],
                cwd=empty,
                env=env,
                stderr=subprocess.DEVNULL,
            )
            try:
                await workers_announced(redis, 1)
                checked = await trio.run_process(
                    [command, "conformance", "--engine", "fake", "--redis", redis.url],
                    cwd=empty,
                    env=env,
                    capture_stdout=True,
                    check=False,
                )
            finally:
                worker.terminate()
                await worker.wait()
    report = checked.stdout.decode()
    assert 0 == checked.returncode, report
    assert "FAIL" not in report
    assert [] == list(empty.iterdir()), "no command wrote into the folder it was started from"


def test_the_sdist_carries_the_licence_the_config_and_the_docs(tmp_path: Path) -> None:
    """The source distribution a packager starts from: LICENSE, the notices, README, config.toml, docs."""
    from setuptools import build_meta

    previous = Path.cwd()
    os.chdir(ROOT)  # setuptools builds the project in the working directory
    try:
        name = build_meta.build_sdist(str(tmp_path))
    finally:
        os.chdir(previous)
    with tarfile.open(tmp_path / name) as sdist:
        members = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
    for expected in (
        "LICENSE",
        "THIRD-PARTY-NOTICES.md",
        "README.md",
        "config.toml",
        "docs/deploy.md",
        "container/install.sh",
        "Containerfile",
    ):
        assert expected in members
