"""crdtnb with the audit log extension (examples/audit_log.py), as a complete app.

    CRDTNB_TOKEN=secret uvicorn audit_app:app --app-dir examples --port 8888

Notebooks are served from CRDTNB_EXAMPLE_ROOT (default: this directory); the log goes
to CRDTNB_AUDIT_LOG (default: audit.jsonl in the current directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from audit_log import AuditLog

from crdtnb import create_app

ROOT = Path(os.environ.get("CRDTNB_EXAMPLE_ROOT", Path(__file__).resolve().parent))
app = create_app(
    ROOT,
    token=os.environ.get("CRDTNB_TOKEN"),
    extensions=[AuditLog(os.environ.get("CRDTNB_AUDIT_LOG", "audit.jsonl"))],
)
