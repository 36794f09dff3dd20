"""The container image's root filesystem, proven without a container engine (none starts on these
machines: FIELD-NOTES, no CAP_SYS_RESOURCE for crun).

The same steps as the Containerfile: Debian bookworm with container/packages.txt (mmdebstrap, minbase),
the wheels of this checkout and its dependencies, container/install.sh run inside it. Then the gateway runs
in it under chroot as the image's user `asr`, with the image's environment, and serves a real session of
real speech on the offline engine: the models are inside the installed packages, nothing is fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import trio

from asr_actors import client
from asr_actors.processes import read_line, stop
from tests.test_http import http_get

ROOT = Path(__file__).resolve().parent.parent.parent
SPEECH = ROOT / "tests" / "data" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"
GUARD = 600
# The image's environment (Containerfile's ENV), less the host: the chroot sees nothing of this process's.
IMAGE_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/var/lib/asr-actors",
    "ASR_ACTORS_CONFIG": "/etc/asr-actors/config.toml",
    "XDG_STATE_HOME": "/var/lib",
}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mmdebstrap") is None,
    reason="chroot needs root and mmdebstrap (Debian's; .ci/run installs it and runs as root)",
)


async def _run(*command: str | Path, cwd: Path | None = None) -> None:
    await trio.run_process([str(part) for part in command], cwd=cwd, capture_stdout=True)


async def test_the_images_root_filesystem_serves_a_session(tmp_path: Path) -> None:
    """Built as the Containerfile builds the image, the root filesystem holds the server and its models:
    `asr-actors serve` in it, as `asr`, answers /healthz and turns a LibriVox sentence into its words, and
    keeps the session's record in its state directory (/var/lib/asr-actors), not in the working one."""
    rootfs = tmp_path / "rootfs"
    packages = (ROOT / "container" / "packages.txt").read_text().split()
    try:
        with trio.fail_after(GUARD):
            await _run(
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                "bookworm",
                rootfs,
            )
            await _run(
                sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation",
                "--wheel-dir", rootfs / "wheelhouse", ROOT,
            )  # fmt: skip
            shutil.copy(ROOT / "container" / "install.sh", rootfs / "tmp" / "install.sh")
            await _run(
                "chroot", rootfs, "env", "-i", *_pairs(IMAGE_ENV), "sh", "/tmp/install.sh", "/wheelhouse"
            )
            (rootfs / "etc" / "asr-actors" / "config.toml").write_text(
                '[apps.image]\nsecret = "image-secret-0123456"\n[languages.en]\nengine = "local"\n'
            )
            pcm = _pcm(SPEECH)
            gateway = await trio.lowlevel.open_process(
                ["chroot", "--userspec=asr:asr", str(rootfs), "env", "-i", *_pairs(IMAGE_ENV),
                 "/opt/asr-actors/bin/asr-actors", "serve", "--port", "0"],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                first = await read_line(gateway, bytearray())
                assert "listening: open http://127.0.0.1:" in first, first
                base = first.rsplit(" ", 1)[-1].strip()
                status, _, _ = await http_get(base, "/healthz")
                assert 200 == status
                url = client.sign_url(
                    base.replace("http://", "ws://") + "v1/asr", "image", "image-secret-0123456"
                )
                results = await client.stream_pcm(url, pcm)
            finally:
                await stop(gateway)
                assert gateway.stdout is not None
                await gateway.stdout.aclose()
        heard = " ".join(r.text for r in results if r.status == "final").lower()
        assert "he was not" in heard, heard
        assert "young man" in heard, heard
        state = rootfs / "var" / "lib" / "asr-actors"  # $XDG_STATE_HOME/asr-actors, the user's home
        assert (state / "asr-records.sqlite3").exists()
        assert (state / "asr-records.sqlite3").stat().st_uid != 0, "written by the user `asr`, not root"
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)  # about 1 GB


def _pairs(env: dict[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in env.items()]


def _pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (16000, 1, 2) == (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        return wav.readframes(wav.getnframes())
