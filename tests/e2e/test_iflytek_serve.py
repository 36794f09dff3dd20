"""Chinese routed to the `iflytek` engine through a real `serve` process and a real client, against the
fake iFlytek service on loopback (this process); a wrong key is a coded error, and the gateway lives on."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from asr_actors import client
from asr_actors.testing.fake_iflytek import FakeIflytek, Switches
from asr_actors.testing.fake_iflytek import text as fake_text
from asr_actors.testing.subprocess_server import running_server

APPKEY, SECRET = "e2e", "e2e-secret"
KEY_ENV = "ASR_E2E_IFLYTEK_KEY"
GUARD = 60


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[apps.{APPKEY}]\nsecret = "{SECRET}"\n'
        '[languages.zh]\nengine = "iflytek"\n[languages.en]\nengine = "fake"\n'
        f'[engines.iflytek]\nurl = "{url}"\napp_id = "test-app"\napi_key_env = "{KEY_ENV}"\n'
    )
    return path


def signed(http_url: str) -> str:
    ws_url = http_url.replace("http://", "ws://") + "v1/asr?lang=zh"
    return client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce())


@pytest.mark.parametrize("key", ["test-key", "a-wrong-key"])
async def test_chinese_through_serve_to_iflytek(tmp_path: Path, key: str) -> None:
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            fake = FakeIflytek(Switches())
            url = await nursery.start(fake.serve)
            async with running_server(write_config(tmp_path, url), {KEY_ENV: key}) as (http_url, server):
                pcm = b"\x01\x00" * 1600 * 25  # 2.5 s: 25 of the fake's characters
                if key == "test-key":
                    results = await client.stream_pcm(signed(http_url), pcm)
                    finals = [r.text for r in results if r.status == "final"]
                    assert [fake_text(0, 10), fake_text(10, 20), fake_text(20, 25)] == finals
                else:
                    with pytest.raises(client.ServerError) as refused:
                        await client.stream_pcm(signed(http_url), pcm)
                    assert 500 == refused.value.code
                    assert "10105" in refused.value.message
                    assert 1 == fake.stats.refused
                assert server.returncode is None
            nursery.cancel_scope.cancel()
