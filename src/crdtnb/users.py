"""Accounts: users with roles (global and per path pattern), argon2 password
hashes, and revocable API tokens stored as hashes.

Kept in ``users.sqlite3`` in the state directory, so ``crdtnb users …`` can
change them while the daemon runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "crdtnb_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Role(IntEnum):
    """Each role can do everything the ones below it can."""

    VIEWER = 1  # read
    EDITOR = 2  # edit
    RUNNER = 3  # edit + execute
    ADMIN = 4  # everything, manage users

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: choose viewer, editor, runner or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class UserError(ValueError):
    pass


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    paths: tuple[tuple[str, Role], ...] = ()

    def role_for(self, path: str) -> Role:
        """The role on a notebook path: the most specific matching pattern wins,
        else the global role."""
        matches = [(len(pattern), role) for pattern, role in self.paths if fnmatch.fnmatchcase(path, pattern)]
        return max(matches)[1] if matches else self.role


def token_hash(token: str) -> str:
    # API tokens are 256-bit random strings: a fast hash suffices (no guessing to slow down).
    return hashlib.sha256(token.encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role INTEGER NOT NULL,
    password_hash TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS path_roles (
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    role INTEGER NOT NULL,
    PRIMARY KEY (name, pattern)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created REAL NOT NULL
);
"""


class UserStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "users.sqlite3"
        self._hasher = PasswordHasher()
        self._ready = False
        # A hash to verify against when the user does not exist, so timing does not
        # tell; made on the first login (argon2 takes 64 MiB and ~0.2 s).
        self._dummy_hash: str | None = None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: the CLI may change users while the daemon runs.
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if not self._ready:
                os.chmod(self.path, 0o600)
                conn.executescript(_SCHEMA)
                self._ready = True
            with conn:
                yield conn
        finally:
            conn.close()

    # -- accounts -------------------------------------------------------------------

    def add(self, name: str, role: Role, password: str) -> None:
        if not NAME_PATTERN.match(name):
            raise UserError("a user name is 1-64 letters, digits, '_', '.', '@' or '-'")
        if len(password) < 8:
            raise UserError("the password must have at least 8 characters")
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserError(f"user {name} exists")
            db.execute(
                "INSERT INTO users (name, role, password_hash, created) VALUES (?, ?, ?, ?)",
                (name, int(role), self._hasher.hash(password), time.time()),
            )

    def remove(self, name: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise UserError(f"no user {name}")

    def set_role(self, name: str, role: Role, pattern: str | None = None) -> None:
        """The global role, or the role on paths matching a glob pattern."""
        with self._db() as db:
            self._require(db, name)
            if pattern is None:
                db.execute("UPDATE users SET role = ? WHERE name = ?", (int(role), name))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO path_roles (name, pattern, role) VALUES (?, ?, ?)",
                    (name, pattern, int(role)),
                )

    def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise UserError("the password must have at least 8 characters")
        with self._db() as db:
            self._require(db, name)
            db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))

    def get(self, name: str) -> Account | None:
        with self._db() as db:
            row = db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            paths = db.execute("SELECT pattern, role FROM path_roles WHERE name = ? ORDER BY pattern", (name,))
            return Account(name, Role(row[0]), tuple((p, Role(r)) for p, r in paths))

    def list(self) -> list[Account]:
        with self._db() as db:
            names = [row[0] for row in db.execute("SELECT name FROM users ORDER BY name")]
        return [account for name in names if (account := self.get(name)) is not None]

    def verify_password(self, name: str, password: str) -> Account | None:
        with self._db() as db:
            row = db.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row and row[0]:
            stored = row[0]
        else:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
            stored = self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        return self.get(name)

    # -- API tokens -----------------------------------------------------------------------

    def new_token(self, name: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db() as db:
            self._require(db, name)
            db.execute("INSERT INTO tokens (hash, name, created) VALUES (?, ?, ?)", (token_hash(token), name, time.time()))
        return token

    def revoke_tokens(self, name: str) -> int:
        with self._db() as db:
            self._require(db, name)
            return db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount

    def account_for_token(self, token: str) -> Account | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(token)
        with self._db() as db:
            row = db.execute("SELECT hash, name FROM tokens WHERE hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return self.get(row[1])

    @staticmethod
    def _require(db: sqlite3.Connection, name: str) -> None:
        if not db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise UserError(f"no user {name}")
