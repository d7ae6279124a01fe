"""Promotion policy for the model registry: which candidate may become the served version.

The storage operations live in recsys.db.repository; this module decides. A *gate* looks at
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
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy.engine import Engine

from recsys.db import repository
from recsys.db.repository import ModelVersionInfo
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
    engine: Engine | None = None,
) -> tuple[ModelVersionInfo, GateDecision]:
    """Promote after the gates allow it (`force` skips them, and says so in the reason).
    `extra_gates` apply to this call only (no global state changes)."""
    candidate = repository.get_model(kind, version, engine=engine)
    current = repository.current_model(kind, engine=engine)
    if force:
        decision = GateDecision(True, "forced: gates skipped")
    else:
        decision = promotion_decision(candidate, current, extra_gates)
        if not decision.allowed:
            raise UserError(
                f"refusing to promote {kind} {version!r}: {decision.reason} (--force overrides)"
            )
    return repository.promote_model(kind, version, engine=engine), decision


@dataclass(frozen=True)
class ResolvedRanker:
    """A ranker model spec resolved: `model` is what `ranking.loading` understands;
    `fusion_alpha` is the score-fusion weight the registered version was validated with
    (its metrics' `fusion_alpha`, written by `recsys train --fusion-alpha`), None when the
    spec is not a registered version or the version has none."""

    model: str
    version: str | None = None
    fusion_alpha: float | None = None


# The zero-shot default LM ranks at random level (docs/RESULTS.md), so it is served fused
# with the retrieval scores at a weight that keeps the retrieval order except where scores
# nearly tie: out of the box the re-ranking stage stays close to the retrieval order.
UNVALIDATED_FUSION_ALPHA = 10.0


def _folder_alpha(path: Path) -> float | None:
    """A hybrid model folder's measured serving weight (card.json `fusion_alpha`)."""
    import json

    card = path / "card.json"
    if not card.is_file():
        return None
    try:
        alpha = json.loads(card.read_text("utf-8")).get("fusion_alpha")
    except (OSError, ValueError, AttributeError):
        return None
    return None if alpha is None else float(alpha)


def resolve_ranker(spec: str, *, engine: Engine | None = None) -> ResolvedRanker:
    """Turn a ranker model spec into a loadable model and its registered fusion weight.

    'default' and paths pass through ('default' with UNVALIDATED_FUSION_ALPHA, a model
    folder with its card's measured weight); 'promoted' is the promoted ranker version's
    artifact; any other string that is not an existing path is looked up as a registered
    version."""
    text = str(spec).strip()
    if text == "default":
        return ResolvedRanker(text, fusion_alpha=UNVALIDATED_FUSION_ALPHA)
    if Path(text).expanduser().exists():
        return ResolvedRanker(text, fusion_alpha=_folder_alpha(Path(text).expanduser()))
    if text == "promoted":
        info = repository.current_model("ranker", engine=engine)
        if info is None:
            raise UserError(
                "no ranker version is promoted yet; train one (`recsys train`) and promote it "
                "(`recsys models promote ranker VERSION`), or use --model default"
            )
    else:
        info = repository.get_model("ranker", text, engine=engine)
    path = local_artifact_path(info.artifact_uri)
    if path is None or not path.exists():
        raise UserError(
            f"ranker {info.version!r} has artifact {info.artifact_uri!r}, which is not a local "
            "path that exists here; copy the artifact or register its local path"
        )
    return ResolvedRanker(str(path), info.version, _registered_alpha(info))


def resolve_ranker_model(spec: str, *, engine: Engine | None = None) -> str:
    """The loadable model of a ranker spec (see `resolve_ranker`)."""
    return resolve_ranker(spec, engine=engine).model


def _registered_alpha(info: ModelVersionInfo) -> float | None:
    from ranking.fusion import is_valid_alpha

    alpha = (info.metrics or {}).get("fusion_alpha")
    if alpha is None:
        return None
    if not is_valid_alpha(alpha):
        raise UserError(
            f"ranker {info.version!r} has fusion_alpha {alpha!r} in its metrics, which is not "
            "a finite number >= 0; set RECSYS_FUSION_ALPHA to override it"
        )
    return float(alpha)


def serving_fusion_alpha(setting: float | None, registered: float | None) -> float:
    """The default score-fusion weight a ranker is served with. Precedence: the explicit
    setting (RECSYS_FUSION_ALPHA), then the registered version's own weight, then 0 (the
    ranker alone). A request's `fusion_alpha` overrides the result per request."""
    if setting is not None:
        return float(setting)
    return 0.0 if registered is None else registered


def load_registered_ranker(
    spec: str,
    *,
    engine: Engine | None = None,
    fusion_alpha: float | None = None,
    **options: Any,
) -> Any:
    """`ranking.engine.load_ranker` for a model spec that may name a registry version
    ('promoted', a version) as well as 'default' or a path; `options` go to load_ranker.
    `fusion_alpha` is the explicit setting (None: RECSYS_FUSION_ALPHA); see
    `serving_fusion_alpha` for how it combines with the registered version's weight."""
    from ranking.engine import load_ranker
    from recsys.settings import get_settings

    resolved = resolve_ranker(spec, engine=engine)
    setting = get_settings().fusion_alpha if fusion_alpha is None else fusion_alpha
    alpha = serving_fusion_alpha(setting, resolved.fusion_alpha)
    return load_ranker(resolved.model, fusion_alpha=alpha, **options)
