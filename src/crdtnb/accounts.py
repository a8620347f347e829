"""The daemon's own users as authenticate/authorize hooks: session cookies,
API tokens, roles per path, and the ``serve --token`` as an admin credential."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from .auth import Action, User, request_token
from .sessions import COOKIE_NAME, SessionSigner
from .users import Role, UserStore

REQUIRED_ROLE = {
    Action.READ: Role.VIEWER,
    Action.WRITE: Role.EDITOR,
    Action.EXECUTE: Role.RUNNER,
    Action.ADMIN: Role.ADMIN,
}
OWNER = User("owner")


class AccountAuth:
    def __init__(
        self,
        users: UserStore,
        signer: SessionSigner,
        admin_token: str | None = None,
        *,
        kernels_isolated: bool = False,
    ) -> None:
        self.users = users
        self.signer = signer
        self._admin_token = admin_token.encode() if admin_token else None
        # Unconfined kernels run as the daemon's OS user, so a runner role limited to
        # some paths would limit nothing: then only a global runner role runs code.
        self.kernels_isolated = kernels_isolated

    def authenticate(self, conn: HTTPConnection) -> User | None:
        token = request_token(conn)
        if token is not None:
            # A token that is wrong is refused outright, even next to a valid cookie.
            if self._admin_token is not None and hmac.compare_digest(token.encode(), self._admin_token):
                return OWNER
            account = self.users.account_for_token(token)
            return User(account.name, account.name) if account else None
        session = self.signer.read(conn.cookies.get(COOKIE_NAME))
        # The session must still be on record: logout, passwd, revoke-tokens and remove end it.
        if session is None or self.users.session_user(session.id) != session.user:
            return None
        return User(session.user, session.user, csrf=session.csrf)

    def role(self, user: User, path: str) -> Role | None:
        if user is OWNER:
            return Role.ADMIN
        account = self.users.get(user.name)
        if account is None:
            return None
        return account.role_for(path) if path else account.role

    def authorize(self, user: User, path: str, action: Action) -> bool:
        role = self.role(user, path)
        if role is None or role < REQUIRED_ROLE[action]:
            return False
        if action is Action.EXECUTE and not self.kernels_isolated:
            global_role = self.role(user, "")
            return global_role is not None and global_role >= Role.RUNNER
        return True
