"""The ``crdtnb`` command line."""

from __future__ import annotations

import argparse
import gc
import getpass
import logging
import os
import secrets
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .settings import Settings
from .users import Role, UserError, UserStore

GIL_SWITCH_INTERVAL = 0.0005  # seconds; see _serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdtnb", description="CRDT sync daemon for Jupyter notebooks")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the notebooks under a directory",
        description="Serve the notebooks under ROOT: live rooms, a durable log, server-side kernels.",
    )
    serve.add_argument("root", nargs="?", default=".", help="directory of notebooks (default: current)")
    Settings.add_arguments(serve)
    _add_user_commands(commands)
    cluster = commands.add_parser("cluster", help="a cluster of daemons sharing one Redis")
    cluster_actions = cluster.add_subparsers(dest="action", required=True)
    status = cluster_actions.add_parser("status", help="nodes, rooms, owners and lease ages")
    status.add_argument("--redis", default=os.environ.get("CRDTNB_REDIS"), help="the cluster's Redis URL (default: $CRDTNB_REDIS)")
    status.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "cluster":
        return _cluster(args)
    return _users(args)


def _cluster(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .cluster.status import cluster_status, format_status

    if not args.redis:
        print("crdtnb: --redis URL (or CRDTNB_REDIS) is needed", file=sys.stderr)
        return 2
    try:
        status = asyncio.run(cluster_status(args.redis))
    except Exception as exc:
        print(f"crdtnb: cannot read the cluster at {args.redis}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _add_user_commands(commands: argparse._SubParsersAction) -> None:
    users = commands.add_parser("users", help="manage accounts (stored in the state directory)")
    actions = users.add_subparsers(dest="action", required=True)

    def place(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--root", default=".", help="the served directory (default: current)")
        sub.add_argument("--state-dir", default=None, help="default: ROOT/.crdtnb, as for serve")
        return sub

    add = place(actions.add_parser("add", help="create a user (password from a prompt or stdin)"))
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.label for r in Role])
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    place(actions.add_parser("list", help="users, their roles and path roles"))
    remove = place(actions.add_parser("remove", help="delete a user, their tokens, sessions and path roles"))
    remove.add_argument("name")
    role = place(actions.add_parser("role", help="set a user's global role, or their role on paths matching a pattern"))
    role.add_argument("name")
    role.add_argument("role", choices=[r.label for r in Role])
    role.add_argument("--path", default=None, help="glob pattern of notebook paths, e.g. 'team/*.ipynb'")
    passwd = place(actions.add_parser("passwd", help="change a password (ends the user's sessions)"))
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    token = place(actions.add_parser("token", help="print a new API token for a user (last line)"))
    token.add_argument("name")
    revoke = place(actions.add_parser("revoke-tokens", help="revoke every API token of a user and end their sessions"))
    revoke.add_argument("name")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("the passwords differ")
    return first


def _users(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else Path(args.root).resolve() / ".crdtnb"
    store = UserStore(state_dir)
    try:
        if args.action == "add":
            store.add(args.name, Role.parse(args.role), _read_password(args.password_stdin))
            print(f"added {args.name} ({args.role})")
        elif args.action == "list":
            for account in store.list():
                paths = ", ".join(f"{pattern}: {role.label}" for pattern, role in account.paths)
                print(f"{account.name}\t{account.role.label}" + (f"\t{paths}" if paths else ""))
        elif args.action == "remove":
            store.remove(args.name)
            print(f"removed {args.name}")
        elif args.action == "role":
            role = Role.parse(args.role)
            store.set_role(args.name, role, args.path)
            print(f"{args.name}: {args.role}" + (f" on {args.path}" if args.path else ""))
            if args.path and role >= Role.RUNNER:
                print(
                    f"crdtnb: warning: a runner role limited to {args.path} lets {args.name} run code only on a "
                    "daemon whose kernels are sandboxed (--kernel-sandbox auto with bubblewrap working, or bwrap); "
                    "with unconfined kernels it is refused, since their code could reach every file of the daemon",
                    file=sys.stderr,
                )
        elif args.action == "passwd":
            store.set_password(args.name, _read_password(args.password_stdin))
            print(f"password of {args.name} changed")
        elif args.action == "token":
            token = store.new_token(args.name)
            print(f"API token for {args.name} (shown once; send it as 'Authorization: token …'):")
            print(token)
        elif args.action == "revoke-tokens":
            tokens, sessions = store.revoke_tokens(args.name)
            print(f"revoked {tokens} token(s) and ended {sessions} session(s) of {args.name}")
    except UserError as exc:
        print(f"crdtnb: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Imported here so that `crdtnb users …` starts fast.
    import uvicorn

    from .app import NotebookSync, create_app
    from .metrics import Metrics
    from .sandbox import SandboxUnavailable
    from .server import (
        ConnectionLimits,
        DirectWebSocketProtocol,
        default_max_connections,
        guarded_http_protocol,
        limit_malloc_arenas,
        raise_fd_limit,
        redact_uvicorn_logs,
    )

    limit_malloc_arenas()  # before any thread allocates

    settings = Settings.from_args(args, args.root)
    server_settings = settings.server
    logging.basicConfig(
        level=server_settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.root.is_dir():
        print(f"crdtnb: {settings.root} is not a directory", file=sys.stderr)
        return 2
    token = settings.access.token or secrets.token_urlsafe(24)
    settings = replace(settings, access=replace(settings.access, token=token))
    try:
        app = create_app(settings=settings, extensions=[Metrics(token=settings.access.metrics_token)])
    except SandboxUnavailable as exc:
        print(f"crdtnb: --kernel-sandbox bwrap: {exc}", file=sys.stderr)
        return 2
    sync: NotebookSync = app.state.sync
    fd_limit = raise_fd_limit()
    max_connections = server_settings.max_connections or default_max_connections(fd_limit)
    if max_connections > fd_limit - 64:
        logging.getLogger("crdtnb").warning(
            "--max-connections %d leaves under 64 of %d file descriptors for files and kernels", max_connections, fd_limit
        )
    connection_limits = ConnectionLimits(header_timeout=server_settings.header_timeout, max_connections=max_connections)
    host = f"[{server_settings.host}]" if ":" in server_settings.host else server_settings.host
    print(f"crdtnb serving {sync.files.root} (state in {sync.state_dir})", flush=True)
    print(f"accepting up to {max_connections} connections ({fd_limit} file descriptors)", flush=True)
    print(f"open http://{host}:{server_settings.port}/?token={token}", flush=True)
    config = uvicorn.Config(
        app,
        http=guarded_http_protocol(connection_limits),
        ws=DirectWebSocketProtocol,
        ws_ping_interval=server_settings.ping_interval or None,
        ws_ping_timeout=server_settings.ping_interval or None,
        host=server_settings.host,
        port=server_settings.port,
        log_level=server_settings.log_level,
        ws_max_size=settings.transport.max_frame_bytes,
        # Compression would cost one deflate per relayed update per peer (a quarter of
        # the daemon's CPU at 100 clients x 200 updates/s), for small binary updates.
        ws_per_message_deflate=False,
        lifespan="on",
    )
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown: every room flushed) and
    # then re-raises the signal under the handlers it found; make those no-ops so
    # a clean shutdown exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # The store's writer thread hands every commit back to the event loop; under
    # load, Python's default 5 ms GIL switch interval makes each hand-off wait up
    # to that long (bench/README.md: p99 at 10 clients x 1000/s 10 ms -> 4 ms).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    server = uvicorn.Server(config)
    config.load()  # configures uvicorn's loggers; the filter goes on after that
    redact_uvicorn_logs()
    # What start-up made (modules, the app) is never garbage: a full collection need not
    # walk it, and then takes a few milliseconds instead of ~30 (bench/README.md, opening).
    gc.freeze()
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
