"""Login sessions (in process): signed cookies that cannot be forged, altered or kept
past their time, a limit on failed logins per key and window, and the signing key
made once, readable by the daemon's user only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import pytest

from crdtnb.sessions import LoginLimiter, Session, SessionSigner, load_secret

SECRET = b"s" * 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed(payload: str, secret: bytes = SECRET) -> str:
    """A cookie with a valid signature over any payload (what only the key holder can make)."""
    return f"{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


def _with_fields(cookie: str, **changes: object) -> str:
    """The cookie's payload with some fields changed, its signature kept."""
    payload, signature = cookie.rsplit(".", 1)
    fields = json.loads(_unb64(payload))
    fields.update(changes)
    return f"{_b64(json.dumps(fields).encode())}.{signature}"


@pytest.fixture
def signer() -> SessionSigner:
    return SessionSigner(SECRET)


# -- signing --------------------------------------------------------------------------------


def test_an_issued_cookie_reads_back_as_its_session(signer: SessionSigner) -> None:
    before = time.time()
    cookie, session = signer.issue("alice")
    assert signer.read(cookie) == session
    assert session.user == "alice"
    assert before + signer.max_age <= session.expires <= time.time() + signer.max_age


def test_each_session_has_its_own_id_and_csrf_token(signer: SessionSigner) -> None:
    sessions = [signer.issue("alice")[1] for _ in range(20)]
    assert len({s.id for s in sessions}) == len({s.csrf for s in sessions}) == 20
    assert all(len(s.id) >= 32 and len(s.csrf) >= 24 for s in sessions)


def test_a_cookie_with_a_changed_user_is_refused(signer: SessionSigner) -> None:
    cookie, _ = signer.issue("mallory")
    assert signer.read(_with_fields(cookie, u="admin")) is None


def test_a_cookie_with_a_later_expiry_is_refused(signer: SessionSigner) -> None:
    cookie, session = signer.issue("alice")
    assert signer.read(_with_fields(cookie, e=session.expires + 3600)) is None


def test_a_cookie_with_a_changed_signature_is_refused(signer: SessionSigner) -> None:
    cookie, _ = signer.issue("alice")
    payload, signature = cookie.rsplit(".", 1)
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert signer.read(f"{payload}.{flipped}") is None
    assert signer.read(payload + ".") is None


def test_a_cookie_signed_with_another_key_is_refused(signer: SessionSigner) -> None:
    cookie, _ = SessionSigner(b"o" * 32).issue("alice")
    assert signer.read(cookie) is None


@pytest.mark.parametrize(
    "cookie",
    [None, "", "no-dot", ".", "a.b", "!!!.???", "a.b.c", "é.é", "x" * 10_000 + ".y"],
)
def test_garbage_cookies_are_refused_quietly(signer: SessionSigner, cookie: str | None) -> None:
    assert signer.read(cookie) is None


def test_a_non_ascii_signature_is_refused_quietly(signer: SessionSigner) -> None:
    """Cookies arrive decoded as latin-1: a byte above 0x7f must not reach
    hmac.compare_digest as a str (it raises TypeError on non-ASCII)."""
    cookie, _ = signer.issue("alice")
    assert signer.read(cookie + "é") is None
    assert signer.read(cookie.split(".")[0] + ".\xe9") is None


@pytest.mark.parametrize(
    "payload",
    [
        _b64(b"not json"),
        _b64(b"\xff\xfe"),
        _b64(b"[1, 2]"),
        _b64(b'"a string"'),
        _b64(json.dumps({"s": "id", "u": "alice", "c": "csrf"}).encode()),  # no expiry
        _b64(json.dumps({"s": "id", "u": "alice", "c": "csrf", "e": "soon"}).encode()),
        "!!!",
    ],
)
def test_a_signed_but_malformed_payload_is_refused(signer: SessionSigner, payload: str) -> None:
    assert signer.read(_signed(payload)) is None


def test_a_well_formed_payload_signed_with_the_key_is_accepted(signer: SessionSigner) -> None:
    """The other side of the tests above: the format they forge is the real one."""
    expires = time.time() + 60
    payload = _b64(json.dumps({"s": "id", "u": "alice", "c": "csrf", "e": expires}).encode())
    assert signer.read(_signed(payload)) == Session("id", "alice", "csrf", expires)


# -- expiry ----------------------------------------------------------------------------------


def test_a_session_is_refused_once_it_expires() -> None:
    signer = SessionSigner(SECRET, max_age=0.5)
    cookie, session = signer.issue("alice")
    assert signer.read(cookie) == session
    time.sleep(0.6)
    assert signer.read(cookie) is None


def test_a_session_without_lifetime_is_never_valid() -> None:
    signer = SessionSigner(SECRET, max_age=0)
    cookie, _ = signer.issue("alice")
    assert signer.read(cookie) is None


# -- the login limiter ------------------------------------------------------------------------


def test_failures_up_to_the_limit_are_allowed_then_blocked() -> None:
    limiter = LoginLimiter(attempts=3, window=60)
    for _ in range(2):
        limiter.failed("user:alice")
        assert limiter.blocked("user:alice") == 0
    limiter.failed("user:alice")
    assert 59 < limiter.blocked("user:alice") <= 60


def test_a_blocked_key_blocks_every_request_it_is_part_of() -> None:
    limiter = LoginLimiter(attempts=2, window=60)
    limiter.failed("user:alice", "addr:10.0.0.1")
    limiter.failed("user:alice", "addr:10.0.0.2")
    assert limiter.blocked("user:alice", "addr:10.0.0.3") > 0  # the name is blocked
    assert limiter.blocked("user:bob", "addr:10.0.0.1") == 0  # one failure from that address
    limiter.failed("user:bob", "addr:10.0.0.1")
    assert limiter.blocked("user:carol", "addr:10.0.0.1") > 0  # now the address is blocked
    assert limiter.blocked("user:carol", "addr:10.0.0.9") == 0


def test_a_success_clears_its_keys_only() -> None:
    limiter = LoginLimiter(attempts=1, window=60)
    limiter.failed("user:alice", "addr:a")
    limiter.succeeded("user:alice")
    assert limiter.blocked("user:alice") == 0
    assert limiter.blocked("addr:a") > 0


def test_failures_older_than_the_window_no_longer_count() -> None:
    limiter = LoginLimiter(attempts=2, window=0.3)
    limiter.failed("user:alice")
    limiter.failed("user:alice")
    wait = limiter.blocked("user:alice")
    assert 0 < wait <= 0.3
    time.sleep(wait + 0.05)
    assert limiter.blocked("user:alice") == 0
    limiter.failed("user:alice")
    assert limiter.blocked("user:alice") == 0  # one failure within the new window


# -- the signing key -----------------------------------------------------------------------------


def test_load_secret_creates_a_private_key_once_and_reads_it_back(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    key = load_secret(state)
    path = state / "session.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(state) == key  # not made anew
    assert load_secret(tmp_path / "other") != key


def test_load_secret_keeps_an_existing_key(tmp_path: Path) -> None:
    (tmp_path / "session.key").write_bytes(b"k" * 32)
    assert load_secret(tmp_path) == b"k" * 32
