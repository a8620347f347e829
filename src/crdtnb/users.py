"""Accounts: users with roles (global and per path pattern), argon2 password
hashes, revocable API tokens and login sessions, both stored as hashes.

Kept in ``users.sqlite3`` in the state directory, so ``crdtnb users …`` can
change them while the daemon runs. Every change that may take access away
bumps a revision number, which the daemon watches (``ChangeWatch``) to re-check
its open connections.
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

    NONE = 0  # nothing (on paths matching a pattern: locked out of them)
    VIEWER = 1  # read
    EDITOR = 2  # edit
    RUNNER = 3  # edit + execute
    ADMIN = 4  # everything, manage users

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: choose none, viewer, editor, runner or admin") from None

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
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_name ON sessions(name);
CREATE TABLE IF NOT EXISTS revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO revision (id, value) VALUES (1, 0);
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
        """Deletes the user with their tokens, sessions and path roles."""
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise UserError(f"no user {name}")
            _bump_revision(db)

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
            _bump_revision(db)

    def set_password(self, name: str, password: str) -> None:
        """Changes the password and ends every session of the user (API tokens stay)."""
        if len(password) < 8:
            raise UserError("the password must have at least 8 characters")
        with self._db() as db:
            self._require(db, name)
            db.execute("UPDATE users SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))
            db.execute("DELETE FROM sessions WHERE name = ?", (name,))
            _bump_revision(db)

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

    def revoke_tokens(self, name: str) -> tuple[int, int]:
        """Revokes every API token of the user and ends all their sessions:
        returns how many tokens and sessions there were."""
        with self._db() as db:
            self._require(db, name)
            tokens = db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount
            sessions = db.execute("DELETE FROM sessions WHERE name = ?", (name,)).rowcount
            _bump_revision(db)
            return tokens, sessions

    def account_for_token(self, token: str) -> Account | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(token)
        with self._db() as db:
            row = db.execute("SELECT hash, name FROM tokens WHERE hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return self.get(row[1])

    # -- login sessions -------------------------------------------------------------------

    def add_session(self, session_id: str, name: str, expires: float) -> None:
        now = time.time()
        with self._db() as db:
            self._require(db, name)
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute(
                "INSERT INTO sessions (hash, name, created, expires) VALUES (?, ?, ?, ?)",
                (token_hash(session_id), name, now, expires),
            )

    def session_user(self, session_id: str) -> str | None:
        """The user of a session that has neither ended nor expired."""
        with self._db() as db:
            row = db.execute(
                "SELECT name FROM sessions WHERE hash = ? AND expires > ?", (token_hash(session_id), time.time())
            ).fetchone()
        return row[0] if row else None

    def end_session(self, session_id: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM sessions WHERE hash = ?", (token_hash(session_id),)).rowcount:
                _bump_revision(db)

    # -- watching for changes -------------------------------------------------------------

    def watch(self) -> ChangeWatch:
        with self._db():
            pass  # the file and its tables exist from here on
        return ChangeWatch(self.path)

    @staticmethod
    def _require(db: sqlite3.Connection, name: str) -> None:
        if not db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise UserError(f"no user {name}")


def _bump_revision(db: sqlite3.Connection) -> None:
    """Marks a change that may take access away (see ChangeWatch)."""
    db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")


class ChangeWatch:
    """Tells cheaply whether access may have been taken away since the last look,
    by this process or by ``crdtnb users …`` in another one.

    One connection stays open: SQLite's ``PRAGMA data_version`` changes when any
    other connection commits, and only then is the revision number read (logins
    and new tokens commit too, but take nothing away)."""

    def __init__(self, path: Path) -> None:
        # timeout 0: never wait on a writer from the event loop; look again next time.
        self._db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self._data_version = self._read_data_version()
        self._revision = self._read_revision()

    def changed(self) -> bool:
        try:
            data_version = self._read_data_version()
            if data_version == self._data_version:
                return False
            revision = self._read_revision()
        except sqlite3.OperationalError:
            return False  # a writer holds the file: its commit shows up on a later look
        self._data_version = data_version
        if revision == self._revision:
            return False
        self._revision = revision
        return True

    def close(self) -> None:
        self._db.close()

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _read_revision(self) -> int:
        return int(self._db.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])
