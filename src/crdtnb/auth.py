"""Who is connecting (authenticate) and what they may do (authorize).

Both are plain callables so a host app can plug in its own users; either may
be sync or async. The daemon's own accounts (accounts.py) are the default.
"""

from __future__ import annotations

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
Authorize = Callable[[User, str, Action], Awaitable[bool] | bool]


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


def allow_all(user: User, path: str, action: Action) -> bool:
    return True


def anonymous(conn: HTTPConnection) -> User:
    """For hosts that authenticate upstream (or tests): everyone is 'anonymous'."""
    return User("anonymous", "Anonymous")
