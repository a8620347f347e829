"""The ``crdtnb`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import signal
import sys
from pathlib import Path

from .app import NotebookSync, create_app
from .kernel import AgentSettings
from .outputs import OutputLimits
from .rooms import RoomSettings
from .transport import TransportLimits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdtnb", description="CRDT sync daemon for Jupyter notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the notebooks under a directory")
    serve.add_argument("root", nargs="?", default=".", help="directory of notebooks (default: current)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    serve.add_argument("--port", type=int, default=8888)
    serve.add_argument("--token", default=os.environ.get("CRDTNB_TOKEN"), help="access token (default: $CRDTNB_TOKEN, else random)")
    serve.add_argument("--state-dir", default=None, help="where the update log lives (default: ROOT/.crdtnb)")
    serve.add_argument("--idle-timeout", type=float, default=60.0, help="seconds before an unused room is saved and unloaded")
    serve.add_argument("--save-delay", type=float, default=1.0, help="seconds after the last change before saving the .ipynb")
    serve.add_argument("--poll-interval", type=float, default=1.0, help="seconds between checks of open files for outside changes")
    serve.add_argument("--max-frame-bytes", type=int, default=16 * 2**20, help="largest websocket frame accepted")
    serve.add_argument("--max-send-queue-bytes", type=int, default=64 * 2**20, help="per-client send queue; a client that falls further behind is disconnected")
    serve.add_argument("--compact-after", type=int, default=1000, help="updates in a room's log before it is compacted into one snapshot")
    serve.add_argument("--max-stream-bytes", type=int, default=2**20, help="cap of one stream output (beginning and latest output kept)")
    serve.add_argument("--max-output-bytes", type=int, default=8 * 2**20, help="cap of any other single output (replaced by a note)")
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


_TOKEN_IN_URL = re.compile(r"((?:^|[?&])token=)[^&\s\"]*")


class RedactTokens(logging.Filter):
    """Keep ?token=… out of uvicorn's access and websocket logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_URL.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(args.root)
    if not root.is_dir():
        print(f"crdtnb: {root} is not a directory", file=sys.stderr)
        return 2
    token = args.token or secrets.token_urlsafe(24)
    settings = RoomSettings(
        idle_timeout=args.idle_timeout,
        save_delay=args.save_delay,
        poll_interval=args.poll_interval,
    )
    limits = TransportLimits(max_frame_bytes=args.max_frame_bytes, max_queue_bytes=args.max_send_queue_bytes)
    app = create_app(
        root,
        token=token,
        state_dir=args.state_dir,
        settings=settings,
        limits=limits,
        compact_after_updates=args.compact_after,
        kernel_settings=AgentSettings(
            limits=OutputLimits(max_stream_bytes=args.max_stream_bytes, max_output_bytes=args.max_output_bytes)
        ),
    )
    sync: NotebookSync = app.state.sync
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"crdtnb serving {sync.files.root} (state in {sync.state_dir})", flush=True)
    print(f"open http://{host}:{args.port}/?token={token}", flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        ws_max_size=args.max_frame_bytes,
        lifespan="on",
    )
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown: every room flushed) and
    # then re-raises the signal under the handlers it found; make those no-ops so
    # a clean shutdown exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server = uvicorn.Server(config)
    config.load()  # configures uvicorn's loggers; the filter goes on after that
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
