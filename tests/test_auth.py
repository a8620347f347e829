"""Who a request is and what it may do (in process: real Starlette requests built from
ASGI scopes, a real UserStore in tmp_path): where tokens are read from, cookies and their
server-side sessions, the admin token, roles per path pattern, and the rule that
unconfined kernels run code only for global runners."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from starlette.requests import Request

from crdtnb.accounts import OWNER, AccountAuth
from crdtnb.auth import Action, User, call_hook, request_token
from crdtnb.sessions import COOKIE_NAME, Session, SessionSigner
from crdtnb.users import Role, UserStore

PASSWORD = "correct horse battery"
ADMIN_TOKEN = "admin-token-for-tests"


def _request(*headers: tuple[str, str], query: str = "") -> Request:
    """A real HTTP request as the ASGI server hands it over (headers as latin-1 bytes)."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/notebooks",
        "query_string": query.encode("latin-1"),
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
    }
    return Request(scope)


def _cookie(value: str) -> tuple[str, str]:
    return ("cookie", f"{COOKIE_NAME}={value}")


@pytest.fixture(scope="module")
def accounts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every account the tests use, hashed once (argon2 takes a good part of a second)."""
    store = UserStore(tmp_path_factory.mktemp("accounts"))
    store.add("alice", Role.EDITOR, PASSWORD)
    store.add("mallory", Role.VIEWER, PASSWORD)
    # bob: a viewer who edits demo/, is locked out of demo/secret/ and runs code in lab/.
    store.add("bob", Role.VIEWER, PASSWORD)
    store.set_role("bob", Role.EDITOR, "demo/*")
    store.set_role("bob", Role.NONE, "demo/secret/*")
    store.set_role("bob", Role.RUNNER, "lab/*.ipynb")
    store.add("guest", Role.NONE, PASSWORD)
    store.set_role("guest", Role.VIEWER, "public/*")
    store.add("rita", Role.RUNNER, PASSWORD)
    store.set_role("rita", Role.VIEWER, "readonly/*")
    store.add("ada", Role.EDITOR, PASSWORD)
    store.set_role("ada", Role.ADMIN, "team/*")
    return store.path


@pytest.fixture
def users(tmp_path: Path, accounts_file: Path) -> UserStore:
    """A fresh copy of the accounts for each test."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(accounts_file, state / accounts_file.name)
    return UserStore(state)


@pytest.fixture
def signer() -> SessionSigner:
    return SessionSigner(b"k" * 32)


def _auth(users: UserStore, signer: SessionSigner, *, isolated: bool = False) -> AccountAuth:
    return AccountAuth(users, signer, ADMIN_TOKEN, kernels_isolated=isolated)


def _login(users: UserStore, signer: SessionSigner, name: str) -> tuple[str, Session]:
    """What /login does: issue a cookie and record its session."""
    cookie, session = signer.issue(name)
    users.add_session(session.id, name, session.expires)
    return cookie, session


# -- request_token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ((("authorization", "token abc"),), "", "abc"),
        ((("authorization", "Bearer abc"),), "", "abc"),
        ((("authorization", "TOKEN  abc  "),), "", "abc"),
        ((), "token=from-query", "from-query"),
        ((("authorization", "token from-header"),), "token=from-query", "from-header"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "token=from-query", "from-query"),
        ((("authorization", "token "),), "token=from-query", "from-query"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "", None),
        ((), "token=", None),
        ((), "other=1", None),
        ((), "", None),
    ],
)
def test_request_token_reads_the_header_then_the_query(headers: tuple[tuple[str, str], ...], query: str, expected: str | None) -> None:
    assert request_token(_request(*headers, query=query)) == expected


async def test_call_hook_awaits_async_hooks_and_calls_sync_ones() -> None:
    async def async_hook(x: int) -> int:
        return x + 1

    assert await call_hook(lambda x: x * 2, 4) == 8
    assert await call_hook(async_hook, 4) == 5


def test_users_are_equal_whatever_their_extra_data() -> None:
    assert User("a", "A", extra={"k": 1}) == User("a", "A")
    assert hash(User("a", "A", extra={"k": 1})) == hash(User("a", "A"))
    assert User("a") != User("a", csrf="x")


# -- authenticate --------------------------------------------------------------------------------


def test_the_admin_token_is_the_owner(users: UserStore, signer: SessionSigner) -> None:
    auth = _auth(users, signer)
    assert auth.authenticate(_request(("authorization", f"token {ADMIN_TOKEN}"))) is OWNER
    assert auth.authenticate(_request(query=f"token={ADMIN_TOKEN}")) is OWNER
    assert auth.role(OWNER, "any/path.ipynb") is Role.ADMIN
    assert all(auth.authorize(OWNER, "x.ipynb", action) for action in Action)


@pytest.mark.parametrize("near_miss", [ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper(), "", "é" + ADMIN_TOKEN])
def test_anything_but_the_exact_admin_token_is_refused(users: UserStore, signer: SessionSigner, near_miss: str) -> None:
    auth = _auth(users, signer)
    assert auth.authenticate(_request(query=f"token={near_miss}")) is None


def test_without_an_admin_token_no_token_is_the_owner(users: UserStore, signer: SessionSigner) -> None:
    auth = AccountAuth(users, signer, None)
    assert auth.authenticate(_request(query="token=")) is None
    assert auth.authenticate(_request(("authorization", "token anything"))) is None


def test_an_api_token_is_its_user_until_revoked(users: UserStore, signer: SessionSigner) -> None:
    token = users.new_token("alice")
    auth = _auth(users, signer)
    assert auth.authenticate(_request(("authorization", f"token {token}"))) == User("alice", "alice")
    assert auth.authenticate(_request(query=f"token={token}x")) is None
    users.revoke_tokens("alice")
    assert auth.authenticate(_request(("authorization", f"token {token}"))) is None


def test_a_cookie_is_its_user_with_a_csrf_token_while_its_session_lasts(users: UserStore, signer: SessionSigner) -> None:
    cookie, session = _login(users, signer, "alice")
    auth = _auth(users, signer)
    user = auth.authenticate(_request(_cookie(cookie)))
    assert user == User("alice", "alice", csrf=session.csrf)
    users.end_session(session.id)  # what /logout does
    assert auth.authenticate(_request(_cookie(cookie))) is None


def test_a_signed_cookie_without_a_session_on_record_is_refused(users: UserStore, signer: SessionSigner) -> None:
    cookie, _ = signer.issue("alice")  # never recorded (or logged out)
    assert _auth(users, signer).authenticate(_request(_cookie(cookie))) is None


def test_a_cookie_cannot_borrow_another_users_session(users: UserStore, signer: SessionSigner) -> None:
    _, alice_session = signer.issue("alice")
    users.add_session(alice_session.id, "mallory", alice_session.expires)  # recorded for someone else
    cookie, _ = signer.issue("alice")
    assert _auth(users, signer).authenticate(_request(_cookie(cookie))) is None


def test_a_wrong_token_is_refused_even_next_to_a_valid_cookie(users: UserStore, signer: SessionSigner) -> None:
    cookie, _ = _login(users, signer, "alice")
    request = _request(_cookie(cookie), ("authorization", "token wrong"))
    assert _auth(users, signer).authenticate(request) is None


def test_a_cookie_with_bytes_above_ascii_is_refused_not_an_error(users: UserStore, signer: SessionSigner) -> None:
    cookie, _ = _login(users, signer, "alice")
    assert _auth(users, signer).authenticate(_request(_cookie(cookie + "\xe9"))) is None
    assert _auth(users, signer).authenticate(_request(_cookie("\xe9.\xe9"))) is None


def test_no_credentials_is_nobody(users: UserStore, signer: SessionSigner) -> None:
    assert _auth(users, signer).authenticate(_request()) is None


# -- roles per path ---------------------------------------------------------------------------------


@pytest.fixture
def bob() -> User:
    """A viewer who edits demo/, is locked out of demo/secret/ and runs code in lab/."""
    return User("bob", "bob")


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("intro.ipynb", Role.VIEWER),
        ("demo/x.ipynb", Role.EDITOR),
        ("demo/deeper/x.ipynb", Role.EDITOR),  # fnmatch's * crosses "/"
        ("demo/secret/x.ipynb", Role.NONE),  # the longest matching pattern wins
        ("lab/run.ipynb", Role.RUNNER),
        ("labs/run.ipynb", Role.VIEWER),
        ("", Role.VIEWER),  # no path: the global role
    ],
)
def test_the_longest_matching_pattern_gives_the_role(users: UserStore, signer: SessionSigner, bob: User, path: str, role: Role) -> None:
    assert _auth(users, signer).role(bob, path) is role


def test_actions_follow_the_role_on_the_path(users: UserStore, signer: SessionSigner, bob: User) -> None:
    auth = _auth(users, signer, isolated=True)

    def allowed(path: str) -> set[str]:
        return {action.value for action in Action if auth.authorize(bob, path, action)}

    assert allowed("intro.ipynb") == {"read"}
    assert allowed("demo/x.ipynb") == {"read", "write"}
    assert allowed("demo/secret/x.ipynb") == set()
    assert allowed("lab/run.ipynb") == {"read", "write", "execute"}


def test_a_global_none_locks_out_everywhere_but_granted_paths(users: UserStore, signer: SessionSigner) -> None:
    auth, guest = _auth(users, signer), User("guest", "guest")
    assert not auth.authorize(guest, "intro.ipynb", Action.READ)
    assert auth.authorize(guest, "public/a.ipynb", Action.READ)
    assert not auth.authorize(guest, "public/a.ipynb", Action.WRITE)


def test_an_unknown_or_removed_user_may_do_nothing(users: UserStore, signer: SessionSigner, bob: User) -> None:
    auth = _auth(users, signer)
    assert auth.role(User("ghost"), "intro.ipynb") is None
    assert not auth.authorize(User("ghost"), "intro.ipynb", Action.READ)
    users.remove("bob")
    assert not any(auth.authorize(bob, "demo/x.ipynb", action) for action in Action)


def test_a_lower_role_applies_at_once(users: UserStore, signer: SessionSigner, bob: User) -> None:
    auth = _auth(users, signer)
    assert auth.authorize(bob, "demo/x.ipynb", Action.WRITE)
    users.set_role("bob", Role.VIEWER, "demo/*")
    assert not auth.authorize(bob, "demo/x.ipynb", Action.WRITE)


# -- running code with unconfined kernels -----------------------------------------------------------


def test_a_runner_role_on_a_path_runs_code_only_when_kernels_are_sandboxed(users: UserStore, signer: SessionSigner, bob: User) -> None:
    assert _auth(users, signer, isolated=True).authorize(bob, "lab/run.ipynb", Action.EXECUTE)
    unconfined = _auth(users, signer, isolated=False)
    assert not unconfined.authorize(bob, "lab/run.ipynb", Action.EXECUTE)
    assert unconfined.authorize(bob, "lab/run.ipynb", Action.WRITE)  # only running code is refused


def test_a_global_runner_runs_code_with_unconfined_kernels_but_not_where_locked_out(users: UserStore, signer: SessionSigner) -> None:
    auth, rita = _auth(users, signer, isolated=False), User("rita", "rita")
    assert auth.authorize(rita, "intro.ipynb", Action.EXECUTE)
    assert not auth.authorize(rita, "readonly/x.ipynb", Action.EXECUTE)
    assert not auth.authorize(rita, "intro.ipynb", Action.ADMIN)


def test_a_path_admin_is_refused_execute_with_unconfined_kernels(users: UserStore, signer: SessionSigner) -> None:
    ada = User("ada", "ada")
    assert _auth(users, signer, isolated=False).authorize(ada, "team/x.ipynb", Action.ADMIN)
    assert not _auth(users, signer, isolated=False).authorize(ada, "team/x.ipynb", Action.EXECUTE)
    assert _auth(users, signer, isolated=True).authorize(ada, "team/x.ipynb", Action.EXECUTE)
