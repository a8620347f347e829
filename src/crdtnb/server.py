"""How `crdtnb serve` runs uvicorn: credentials kept out of its logs."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

# Query parameters that carry a credential, by their decoded, lower-cased name.
SECRET_QUERY_NAMES = frozenset({"token"})
_QUERY_PARAM = re.compile(r"(?<=[?&])([^=&\s\"'#]+)=([^&\s\"'#]*)")


def redact_query_secrets(text: str) -> str:
    """Replace the value of every query parameter whose name decodes to a secret
    one: Starlette decodes names, so ``?%74oken=`` authenticates like ``?token=``."""

    def hide(match: re.Match[str]) -> str:
        if unquote_plus(match.group(1)).strip().lower() in SECRET_QUERY_NAMES:
            return f"{match.group(1)}=[redacted]"
        return match.group(0)

    return _QUERY_PARAM.sub(hide, text) if "=" in text else text


class RedactTokens(logging.Filter):
    """Keeps ``?token=…`` (however spelled) out of uvicorn's access and websocket logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query_secrets(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = redact_query_secrets(record.msg)
        return True


def redact_uvicorn_logs() -> None:
    """Call once uvicorn has configured its loggers (``Config.load``)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
