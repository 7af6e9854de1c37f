"""How every stagesync process logs: one JSON object per line, secrets scrubbed.

Log calls pass facts as `extra={...}` fields (collection, counts, durations), never document
values. As a last line of defence a filter masks the password of any URI that reaches a log
message or field, whatever code produced it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Greedy up to the last "@" of the authority, so a stray "@" in a password cannot leak its tail.
URI_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/?#@\s]*):(?P<pw>[^/\s]*)@", re.IGNORECASE
)


def redact_uri(text: str) -> str:
    """`mongodb://app:s3cret@host/` -> `mongodb://app:***@host/` (also inside longer text)."""
    return URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_uri(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _scrub(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_scrub(a) for a in record.args)
        for name, value in list(vars(record).items()):
            if isinstance(value, str) and "://" in value:
                setattr(record, name, redact_uri(value))
        return True


def _scrub(value: Any) -> Any:
    return redact_uri(value) if isinstance(value, str) else value


def configure_logging(process: str, level: str | None = None) -> None:
    """JSON lines on stderr, tagged with the process kind (watcher, worker, cli)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            static_fields={"process_kind": process},
        )
    )
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("STAGESYNC_LOG_LEVEL", "INFO"))
    for noisy in ("pymongo", "kombu", "urllib3", "faker", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
