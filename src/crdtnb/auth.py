"""Who is connecting (authenticate) and what they may do (authorize).

Both are plain callables so a host app can plug in its own users; either may
be sync or async. The default is a single shared token.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from starlette.requests import HTTPConnection


class Action(str, Enum):
    READ = "read"  # sync the document, see presence
    WRITE = "write"  # edit the document, create notebooks
    EXECUTE = "execute"  # run code in the notebook's kernel
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    """An authenticated identity.

    ``display_name``: when set, it is the name shown to others (awareness
    ``user.name`` is forced to it, so presence cannot be spoofed).
    ``csrf``: set when the identity came from an ambient credential (a cookie):
    unsafe requests must then carry this token in the X-CSRF-Token header.
    """

    name: str
    display_name: str = ""
    csrf: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


Authenticate = Callable[[HTTPConnection], Union[Awaitable["User | None"], "User | None"]]
Authorize = Callable[[User, str, Action], Union[Awaitable[bool], bool]]


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def request_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: ``Authorization: token …`` (or Bearer), else ``?token=``."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return conn.query_params.get("token") or None


class TokenAuth:
    """Everyone holding the one token is the same, all-powerful user."""

    def __init__(self, token: str, user: User | None = None) -> None:
        if not token:
            raise ValueError("an empty token would let anyone in")
        self._token = token.encode()
        # The shared token is one credential for possibly several people: their
        # chosen presence names are kept (tagged with the account).
        self._user = user or User("owner")

    def __call__(self, conn: HTTPConnection) -> User | None:
        given = request_token(conn)
        if given is not None and hmac.compare_digest(given.encode(), self._token):
            return self._user
        return None


def allow_all(user: User, path: str, action: Action) -> bool:
    return True


def anonymous(conn: HTTPConnection) -> User:
    """For hosts that authenticate upstream (or tests): everyone is 'anonymous'."""
    return User("anonymous", "Anonymous")
