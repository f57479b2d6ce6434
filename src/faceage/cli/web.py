"""``faceage web``: serve the ageing page on this computer (a Gradio app; ``pip install 'faceage[web]'``).

It listens on 127.0.0.1 unless ``--host`` says otherwise, and says so when it starts. Photos stay in memory for
their browser session and are never written to disk; nothing is sent anywhere (no analytics, no downloads).
"""

from __future__ import annotations

import argparse
import signal
import sys

from faceage.cli import CLIError
from faceage.web import MAX_MEGAPIXELS, MAX_UPLOAD_MB, TIMEOUT_S

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web",
        help="serve a web page that ages photos, on this computer",
        description="Serve a web page to age the faces in photos with any installed model. It listens on "
        "127.0.0.1 (this computer only) unless --host says otherwise. Needs the web extra: "
        "pip install 'faceage[web]'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--model", help="method selected first: name, exported folder, checkpoint .pt or .onnx")
    p.add_argument("--concurrency", type=int, help="requests computed at once (default: one per core, at most 4)")
    p.add_argument(
        "--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload in MB (default %(default)g)"
    )
    p.add_argument(
        "--max-megapixels", type=float, default=MAX_MEGAPIXELS, help="largest photo in megapixels (default %(default)g)"
    )
    p.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds one request may take (default %(default)g)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, value in [("--port", args.port), ("--concurrency", args.concurrency)]:
        if value is not None and value < 1:
            raise CLIError(f"{name} must be a positive number, got {value}")
    if min(args.max_upload_mb, args.max_megapixels, args.timeout) <= 0:
        raise CLIError("--max-upload-mb, --max-megapixels and --timeout must be positive")
    try:
        from faceage.web.app import start
    except ImportError as e:
        raise CLIError(f"faceage web needs gradio ({e}): pip install 'faceage[web]'") from None
    from faceage.infer.resolve import ModelNotFoundError
    from faceage.web.engine import Limits, WebError

    limits = Limits(args.max_upload_mb, args.max_megapixels, args.timeout)
    try:
        server = start(host=args.host, port=args.port, model=args.model, limits=limits, concurrency=args.concurrency)
    except (ModelNotFoundError, WebError) as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"cannot listen on {args.host}:{args.port} ({e}); pick another --port") from None
    where = (
        "this computer only"
        if args.host in LOOPBACK
        else "REACHABLE FROM OTHER MACHINES on your network: anyone who can reach it can age photos with it"
    )
    print(
        f"faceage web: {server.url} ({where}; --host changes it).\n"
        "Photos stay in memory for their browser tab and are never written to disk; no analytics, no network "
        "calls. Results carry a 'synthetic image' label in the PNG.\n"
        f"Methods: {', '.join(server.app.methods.labels)}. {server.app.runner.workers} request(s) at a time, "
        f"{limits.timeout_s:g} s each at most. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: close cleanly, delete the temp folder
    try:
        server.demo.block_thread()
    finally:
        server.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
