"""Promotion policy for the model registry: which candidate may become the served version.

The storage operations live in recsys.db.registry; this module decides. A *gate* looks at
the candidate (and the version it would replace) and allows or refuses, with a reason. The
built-in gate checks that the artifact exists and matches its registered sha256. Other stages
add gates (the RL trainer adds an evaluation gate) with `add_gate`; `promote` runs them all
unless forced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy.engine import Engine

from recsys.db.registry import ModelVersionInfo, current_model, get_model, promote_model
from recsys.errors import UserError


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    reason: str


Gate = Callable[[ModelVersionInfo, ModelVersionInfo | None], GateDecision]


def local_artifact_path(artifact_uri: str) -> Path | None:
    """The local path of a `file://` URI or plain path; None for remote URIs (s3://, hf://)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # 'C:' on Windows is a path
        return Path(artifact_uri)
    return None


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative path + content, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def artifact_gate(candidate: ModelVersionInfo, _current: ModelVersionInfo | None) -> GateDecision:
    """A local artifact must exist and, when a sha256 was registered, match it."""
    path = local_artifact_path(candidate.artifact_uri)
    if path is None:
        return GateDecision(True, f"remote artifact {candidate.artifact_uri} not checked")
    if not path.exists():
        return GateDecision(False, f"artifact {path} does not exist")
    if candidate.sha256 and sha256_of(path) != candidate.sha256:
        return GateDecision(False, f"artifact {path} does not match its registered sha256")
    return GateDecision(True, "artifact present" + (", sha256 matches" if candidate.sha256 else ""))


_GATES: list[Gate] = [artifact_gate]


def add_gate(gate: Gate) -> None:
    """Register another gate every promotion must pass (idempotent)."""
    if gate not in _GATES:
        _GATES.append(gate)


def remove_gate(gate: Gate) -> None:
    if gate in _GATES:
        _GATES.remove(gate)


def promotion_decision(
    candidate: ModelVersionInfo,
    current: ModelVersionInfo | None,
    extra_gates: Sequence[Gate] = (),
) -> GateDecision:
    """Run every gate (the registered ones, then `extra_gates`); the first refusal wins,
    otherwise the reasons are joined."""
    reasons = []
    for gate in [*_GATES, *extra_gates]:
        decision = gate(candidate, current)
        if not decision.allowed:
            return decision
        reasons.append(decision.reason)
    return GateDecision(True, "; ".join(reasons))


def promote(
    kind: str,
    version: str,
    *,
    force: bool = False,
    extra_gates: Sequence[Gate] = (),
    engine: Engine,
) -> tuple[ModelVersionInfo, GateDecision]:
    """Promote after the gates allow it (`force` skips them, and says so in the reason).
    `extra_gates` apply to this call only (no global state changes)."""
    candidate = get_model(kind, version, engine=engine)
    current = current_model(kind, engine=engine)
    if force:
        decision = GateDecision(True, "forced: gates skipped")
    else:
        decision = promotion_decision(candidate, current, extra_gates)
        if not decision.allowed:
            raise UserError(
                f"refusing to promote {kind} {version!r}: {decision.reason} (--force overrides)"
            )
    return promote_model(kind, version, reason=decision.reason, engine=engine), decision
