"""Login sessions: signed cookies, CSRF tokens and a limit on failed logins.

A cookie names a session by a random id; the server keeps a record of each
session under the id's hash (``UserStore``, in users.sqlite3), so a session
ends when its record goes: at logout, or when ``crdtnb users passwd``,
``revoke-tokens`` or ``remove`` end all of a user's sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

COOKIE_NAME = "crdtnb_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    id: str  # random; the server's record of the session is kept under its hash
    user: str
    csrf: str
    expires: float


def load_secret(state_dir: str | os.PathLike[str]) -> bytes:
    """The key that signs session cookies, created once (mode 0600) in the state directory."""
    path = Path(state_dir) / "session.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        key = secrets.token_bytes(32)
        handle.write(key)
    return key


class SessionSigner:
    def __init__(self, secret: bytes, max_age: float = 7 * 24 * 3600) -> None:
        self._secret = secret
        self.max_age = max_age

    def issue(self, user: str) -> tuple[str, Session]:
        """A new session and its cookie; the caller records it (``UserStore.add_session``)."""
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(24), time.time() + self.max_age)
        fields = {"s": session.id, "u": session.user, "c": session.csrf, "e": session.expires}
        payload = _b64(json.dumps(fields).encode())
        return f"{payload}.{self._sign(payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if its signature holds and it has not expired
        (whether it has ended is the server's record to say)."""
        # A real cookie is ASCII; hmac.compare_digest raises on a non-ASCII str.
        if not cookie or "." not in cookie or not cookie.isascii():
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["s"]), str(data["u"]), str(data["c"]), float(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


class LoginLimits(Protocol):
    """Failed-login accounting (sync or async): in memory for one daemon (LoginLimiter),
    in Redis for a cluster (cluster/limits.py)."""

    def blocked(self, *keys: str) -> float | Awaitable[float]: ...
    def failed(self, *keys: str) -> None | Awaitable[None]: ...
    def succeeded(self, *keys: str) -> None | Awaitable[None]: ...


class LoginLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds, per user name and per client address."""

    def __init__(self, attempts: int = 5, window: float = 60.0) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, *keys: str) -> float:
        """Seconds to wait before another try (0: go ahead)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self.attempts:
                wait = max(wait, failures[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
