"""Rank a JSONL file of requests (one public request JSON per line) into a JSONL of results.

For users who bring their own candidates in bulk. The output is written to a temporary file
and renamed at the end, so a crash never leaves a half-written result file; every line of
the input is validated before any model work, and a bad line is reported by number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.types import RankRequest
from recsys.errors import UserError


def read_requests(path: Path) -> list[RankRequest]:
    if not path.is_file():
        raise UserError(f"request file {str(path)!r} not found")
    requests = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                requests.append(RankRequest.from_dict(json.loads(line)))
            except (json.JSONDecodeError, RequestError) as exc:
                raise UserError(f"{path}, line {number}: {exc}") from exc
    if not requests:
        raise UserError(f"{path} has no requests (one JSON object per line expected)")
    return requests


def rank_file(
    in_path: str | Path,
    out_path: str | Path,
    ranker: Ranker,
    *,
    chunk: int = 64,
    on_progress: Callable[[float], None] | None = None,
) -> int:
    """Rank every request of `in_path` into `out_path`; returns the number ranked."""
    requests = read_requests(Path(in_path))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for start in range(0, len(requests), chunk):
            for result in ranker.rank_batch(requests[start : start + chunk]):
                out.write(json.dumps(result.to_dict()) + "\n")
            if on_progress is not None:
                on_progress(min(1.0, (start + chunk) / len(requests)))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, out_path)
    return len(requests)
