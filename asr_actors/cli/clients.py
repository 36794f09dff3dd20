"""The client commands: `sign` (a signed link) and `transcribe` (a file through a running server)."""

from __future__ import annotations

import argparse
import sys
import time

import trio

from asr_actors import client, transcripts
from asr_actors.cli import output
from asr_actors.cli.common import SECRET_ENV, secret


def add(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sign = commands.add_parser("sign", help="print a signed, single-use WebSocket URL")
    sign.add_argument("--appkey", required=True)
    sign.add_argument(
        "--secret", help=f"the app's secret (default: ${SECRET_ENV}, which keeps it out of history)"
    )
    sign.add_argument("--url", default="ws://127.0.0.1:8000/v1/asr")
    sign.add_argument(
        "--nonce", action="store_true", help="add a nonce, so several links per second stay distinct"
    )

    transcribe = commands.add_parser(
        "transcribe", help="stream an audio file and print what the server hears"
    )
    transcribe.add_argument("file")
    transcribe.add_argument("--url", default="ws://127.0.0.1:8000/v1/asr")
    transcribe.add_argument(
        "--appkey", help="with --secret: sign the link here; without: ask the server's /v1/sign"
    )
    transcribe.add_argument("--secret", help=f"the app's secret (default: ${SECRET_ENV})")
    transcribe.add_argument("--lang", help="language code, e.g. en")
    transcribe.add_argument(
        "--format",
        choices=transcripts.FORMATS,
        default="txt",
        help="txt (a line per sentence, shown as it comes), json (sentences and word times), srt or vtt",
    )
    transcribe.add_argument(
        "--realtime", action="store_true", help="send at the audio's own pace, like a microphone"
    )
    transcribe.add_argument(
        "--hotword",
        action="append",
        default=[],
        metavar="PHRASE",
        help="a phrase to listen for (a name, a product); repeat for more; engines that cannot take "
        "hot words refuse the session (/v1/languages lists what each engine honours)",
    )
    transcribe.add_argument("--words", action="store_true", help="ask for word times in the finals")


def sign(args: argparse.Namespace) -> int:
    given = secret(args)
    if not given:
        print(f"sign needs --secret or ${SECRET_ENV}", file=sys.stderr)
        return 2
    nonce = client.fresh_nonce() if args.nonce else None
    print(client.sign_url(args.url, args.appkey, given, time.time(), nonce))
    return 0


async def transcribe(args: argparse.Namespace) -> int:
    given = secret(args)
    if args.appkey and given:
        url = client.sign_url(args.url, args.appkey, given, time.time(), client.fresh_nonce())
    else:
        http_url = (
            args.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).split("/v1/")[0] + "/"
        )
        url = await client.fetch_demo_url(http_url)
    if args.lang:
        url += f"&lang={args.lang}"
    pcm = await trio.to_thread.run_sync(client.load_audio, args.file)
    # Plain text is shown as it comes; the other formats are printed whole at the end.
    view = output.TerminalView(
        sys.stdout.isatty() and args.format == "txt", len(pcm) / 32000, args.format == "txt"
    )
    options: dict[str, object] = {}
    if args.hotword:
        options["hotwords"] = args.hotword
    if args.words:
        options["words"] = True
    results = await client.stream_pcm(
        url,
        pcm,
        realtime=args.realtime,
        on_result=view.result,
        on_progress=view.progress,
        options=options or None,
    )
    view.done()
    if args.format != "txt":
        sentences = [
            transcripts.from_milliseconds(r.text, r.begin_ms, r.end_ms, r.words)
            for r in results
            if r.status == "final"
        ]
        sys.stdout.write(transcripts.render(sentences, args.format))
    return 0
