"""Committee folders with a card (`recsys committee`): the application's side of
ranking.backends.committee.

The card says what the committee is for a resolver and an evaluation: its serving weight
(`fusion_alpha`, as a trained model's card), its members and weights, and whose logs its
members read (`options.users`: "all" when any member's did, so an evaluation on held-out
users labels it as a same-log model, recsys.resolver.trained_on_users).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ranking.backends.committee import (
    MANIFEST,
    CommitteeSpec,
    is_committee_dir,
    write_committee,
)
from ranking.errors import ModelLoadError
from ranking.folders import ForeignFolderError, written_whole
from ranking.hybrid import HybridConfig, is_hybrid_dir, read_manifest
from ranking.model_spec import resolve_model
from ranking.types import is_valid_alpha
from recsys.errors import UserError
from recsys.resolver import trained_on_users

CARD = "card.json"


def make_committee(
    out: str | os.PathLike[str],
    members: Sequence[str],
    weights: Sequence[float] | None = None,
    *,
    fusion_alpha: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write OUT/committee.json (members as paths relative to OUT) and OUT/card.json."""
    folder = Path(out)
    if (folder / MANIFEST).exists() and not overwrite:
        raise UserError(f"{folder} already holds a committee; pass --overwrite to replace it")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; name a folder for the committee")
    try:
        spec = CommitteeSpec.of(members, weights)
        for member in members:
            if is_committee_dir(resolve_model(member).path):
                raise UserError(f"member {member!r} is itself a committee; list its members")
        _check_same_catalogue(members)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    if fusion_alpha is not None and not is_valid_alpha(fusion_alpha):
        raise UserError(f"--fusion-alpha must be a finite number >= 0; got {fusion_alpha}")
    stored = CommitteeSpec(tuple(_relative(m, folder) for m in members), spec.weights)
    try:
        with written_whole(folder, MANIFEST) as tmp:  # the manifest and card in one swap
            write_committee(tmp, stored)
            _write_card(tmp, stored, fusion_alpha, _users(members))
    except ForeignFolderError as exc:
        raise UserError(str(exc)) from None
    return folder


def _check_same_catalogue(members: Sequence[str]) -> None:
    """Refuse, before anything is written, hybrid members whose manifests already show they
    would read one prompt differently (another base model, catalogue or prompt layout); the
    backend checks the loaded tokenizers again (`ranking.backends.committee`)."""
    hybrids = [(m, read_manifest(p)) for m in members if is_hybrid_dir(p := resolve_model(m).path)]
    if not hybrids:
        return
    first, (config0, items0) = hybrids[0]
    for member, (config, items) in hybrids[1:]:
        for what, a, b in (
            ("base model", config0.base, config.base),
            ("catalogue (item vectors' ids)", items0, items),
            ("prompt layout", _layout(config0), _layout(config)),
        ):
            if a != b:
                raise UserError(
                    f"members {first!r} and {member!r} have a different {what}: a committee's "
                    "members must share a base model, a catalogue and a prompt layout"
                )  # fmt: skip


def _layout(config: HybridConfig) -> tuple[object, ...]:
    return config.template, config.title_chars, config.chat, config.item_labels


def _relative(member: str, folder: Path) -> str:
    """A member folder as a path relative to the committee (the pair moves together)."""
    path = Path(member).expanduser()
    if not path.exists():
        return member  # a packaged name such as 'default'
    return os.path.relpath(path.resolve(), folder.resolve())


def _users(members: Sequence[str]) -> str:
    """ "all" when any member read the held-out users' logs (its card says so)."""
    seen = {trained_on_users(m) or "train" for m in members if Path(m).expanduser().is_dir()}
    return "all" if "all" in seen else "train"


def _write_card(folder: Path, spec: CommitteeSpec, fusion_alpha: float | None, users: str) -> None:
    card = {
        "kind": "committee",
        "members": [
            {"model": m, "weight": w} for m, w in zip(spec.members, spec.weights, strict=True)
        ],
        "fusion_alpha": fusion_alpha,
        "options": {"users": users},
    }
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
