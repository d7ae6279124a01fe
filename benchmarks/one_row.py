"""Write a one-row benchmark result: `<out>.json` (the result) and `<out>.md` (a table)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_one_row(
    out: Path, result: dict[str, Any], header: Sequence[str], row: Sequence[str]
) -> str:
    """Save `result` as JSON and the markdown table (`header`, one `row`) beside it."""
    return write_rows(out, result, header, [row])


def write_rows(
    out: Path, result: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[str]]
) -> str:
    """Save `result` as JSON and the markdown table (`header`, `rows`) beside it."""
    table = (
        "| " + " | ".join(header) + " |\n"
        + "|" + " --- |" * len(header) + "\n"
        + "".join("| " + " | ".join(row) + " |\n" for row in rows)
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    return table
