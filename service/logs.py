"""Log records as one JSON object per line (`KB_LOG_FORMAT=json`), for a log shipper to parse.

`JsonFormatter` is a plain `logging.Formatter`: the service puts it on the `kb` logger, and
`deploy/gunicorn.conf.py` on gunicorn's error log; gunicorn's access log gets the same shape
from `JsonAccessLogger` there.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"[, "exception"]}: UTC time to the millisecond."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        extra = getattr(record, "fields", None)  # structured extras: log.info(..., extra={"fields": {...}})
        if isinstance(extra, dict):
            entry.update({k: v for k, v in extra.items() if k not in entry})
        return json.dumps(entry, ensure_ascii=False, default=str)
