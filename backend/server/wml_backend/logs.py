"""The backend's log: plain lines, or one JSON object a line (``--log-format json``) for a log
collector, with the ids of the run, experiment and account a line is about."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

#: The fields a log call may add (``extra=``) that a JSON line carries.
FIELDS = ("run_id", "experiment_id", "account", "state", "replica")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_fields(run: Any) -> dict[str, Any]:
    """The ``extra`` of a log call about ``run`` (a ``RunRow``): its id, experiment and account."""
    return {"run_id": run.id, "experiment_id": run.experiment_id, "account": run.account}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the ids in
    ``FIELDS`` that the call gave, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str) -> None:
    """Send the process's log records (the web server's too) to stderr in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python's warnings too, not as bare lines among JSON ones
