"""Logging for every process the command line starts (docs/operations.md, "Logs").

`configure_logging(settings)` installs one handler on the root logger, on standard error:
`RECSYS_LOG_FORMAT=text` (default) writes `LEVEL:    message` lines, as uvicorn always did;
`json` writes one JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`,
`message`, then the record's structured fields (`logging` `extra=`), e.g. the API's access
line (recsys.api.app); and no progress bars (TQDM_DISABLE). Our own loggers (recsys,
ranking, retrieval, jobs, uvicorn) log at `RECSYS_LOG_LEVEL`; the others from WARNING on.

User ids never reach a log as such: `user_hash` is a keyed BLAKE2b of the id, keyed by a
random per-install salt (`<var_dir>/log-salt`, created once), so one user's requests can
be followed through the logs without the logs naming the user.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.settings import Settings

OUR_LOGGERS = ("recsys", "ranking", "retrieval", "jobs", "uvicorn")
SALT_FILE = "log-salt"
# what every LogRecord has: anything else on a record came from `extra=` and is a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


class TextFormatter(logging.Formatter):
    """`INFO:     message` (uvicorn's prefix, no colours), a traceback below when any."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<9} {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or a traceback are
    escaped by JSON): time, level, logger, message, the record's extra fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record arrives (a test's capture, a
    redirected stream), never to a stream closed since the handler was made."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[no-untyped-def, override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(settings: Settings) -> logging.Handler:
    """Install (or replace: calling it again is harmless) the root handler in the settings'
    format, and the levels. Returns the handler."""
    if settings.log_format == "json":  # progress bars would break the one-object lines
        os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is first imported
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(max(logging.WARNING, level))  # other libraries: warnings and errors only
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return handler


def route_library_logs() -> None:
    """transformers writes through a stderr handler of its own that does not propagate, so
    its lines would escape the format above; once it is imported (a model was loaded), send
    them through the root handler instead."""
    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def user_hash(user_id: str, salt: bytes) -> str:
    """16 hex characters standing for `user_id` in logs (the same for the same salt)."""
    return hashlib.blake2b(user_id.encode(), key=salt, digest_size=8).hexdigest()


def install_salt(var_dir: Path) -> bytes:
    """The per-install key of `user_hash`: `<var_dir>/log-salt`, made on first use (copy
    it to every server whose logs should agree). Without a writable var_dir, a key for
    this process only."""
    path = Path(var_dir) / SALT_FILE
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{SALT_FILE}.{os.getpid()}")
            tmp.write_text(secrets.token_hex(16) + "\n", encoding="ascii")
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # another process may have made it meanwhile: keep that
            except FileExistsError:
                pass
            except OSError:  # no hard links here
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning(
            "no log salt at %s (%s): user hashes hold for this process only", path, exc
        )
        return secrets.token_bytes(16)
