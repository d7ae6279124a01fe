"""The one model resolver: a ranker spec -> the weights to load and its serving weight.

A spec is what a user types after `--model` or sets as RECSYS_MODEL:

=================  ==================================================================
``default``        the embedded SmolLM2 (ranking.model_spec), zero-shot: served at
                   UNVALIDATED_SERVING_ALPHA (the retrieval order itself), fine-tuned
                   at UNVALIDATED_TRAINING_ALPHA
``gemma3-270m``    Gemma 3 270M from the ``gemma`` extra, zero-shot like ``default``
a path             a HF directory, a .gguf, or a hybrid model folder (its card.json's
                   measured ``fusion_alpha``); anything with a ``/`` or a ``.gguf``
                   suffix is a path, so a typo gets ranking.model_spec's "does not exist"
``promoted``       the promoted ranker version of the model registry
anything else      a registered ranker version
=================  ==================================================================

Path-level resolution (which file inside a directory) is ranking.model_spec's; this module
adds the registry, which only the application knows about.

Two weights per model: `fusion_alpha`, what it is served with, and `training_alpha`, what
fine-tuning it trains and validates at (recsys.loop). They are the same measured weight for
a registered version or a model card; they differ only for a zero-shot packaged model,
whose serving weight is a guarantee rather than a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from ranking.fusion import RETRIEVAL_ORDER
from ranking.model_spec import PACKAGED_MODELS
from recsys.errors import UserError

# A zero-shot packaged LM ranks at random level (docs/RESULTS.md) and has no measured fusion
# weight, so it is served at the retrieval order itself (ranking.fusion.RETRIEVAL_ORDER: no
# model call, the order unchanged): whatever a tuned version later wins, the default a fresh
# machine serves is never worse than the retrieval order it re-ranks. Fine-tuning it
# (recsys.loop) trains and validates at UNVALIDATED_TRAINING_ALPHA instead, a weight at
# which the ranker still has a say (at the retrieval order it has none to learn from): the
# tuned version is registered, gated and served at that measured weight.
UNVALIDATED_SERVING_ALPHA = RETRIEVAL_ORDER
UNVALIDATED_TRAINING_ALPHA = 10.0


@dataclass(frozen=True)
class ResolvedRanker:
    """`model` is what ranking.loading understands ('default' or a path); `version` the
    registry version it came from; `fusion_alpha` the weight it is served with (None: none
    recorded, served alone); `training_alpha` the weight to fine-tune and validate it at
    (None: 0, the ranker alone)."""

    model: str
    version: str | None = None
    fusion_alpha: float | None = None
    training_alpha: float | None = None

    @property
    def unvalidated(self) -> bool:
        """A zero-shot packaged model: its serving weight is a guarantee (the retrieval
        order), not a measurement of the model (`recsys eval` measures it alone)."""
        return self.version is None and self.model in PACKAGED_MODELS


def is_path_spec(text: str) -> bool:
    return "/" in text or text.endswith(".gguf") or Path(text).expanduser().exists()


def resolve_ranker(spec: str, *, engine: Engine | None = None) -> ResolvedRanker:
    """Resolve a ranker spec (module doc); registry specs read `engine`'s database."""
    text = str(spec).strip()
    if text in PACKAGED_MODELS:
        return ResolvedRanker(
            text, fusion_alpha=UNVALIDATED_SERVING_ALPHA, training_alpha=UNVALIDATED_TRAINING_ALPHA
        )
    if is_path_spec(text):
        path = Path(text).expanduser()
        alpha = _folder_alpha(path) if path.exists() else None
        return ResolvedRanker(text, fusion_alpha=alpha, training_alpha=alpha)
    return _registered(text, engine)


def serving_fusion_alpha(setting: float | None, registered: float | None) -> float:
    """The default score-fusion weight a ranker is served with. Precedence: the explicit
    setting (RECSYS_FUSION_ALPHA), then the resolved model's own weight (RETRIEVAL_ORDER for
    a zero-shot packaged model), then 0 (the ranker alone). A request's `fusion_alpha`
    overrides the result per request."""
    if setting is not None:
        return float(setting)
    return 0.0 if registered is None else registered


def _registered(text: str, engine: Engine | None) -> ResolvedRanker:
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.db.engine import get_engine
    from recsys.db.registry import current_model, get_model
    from recsys.registry import local_artifact_path

    engine = engine or get_engine()  # the settings' database
    try:
        if text == "promoted":
            info = current_model("ranker", engine=engine)
            if info is None:
                raise UserError(
                    "no ranker version is promoted yet; train one (`recsys train`) and promote "
                    "it (`recsys models promote ranker VERSION`), or use --model default"
                )
        else:
            info = get_model("ranker", text, engine=engine)
    except SQLAlchemyError as exc:
        raise UserError(
            f"model {text!r} needs the model registry, but its database is not usable "
            f"({type(exc.orig or exc).__name__}); run `recsys db upgrade` and register a "
            "model, or use --model default or a model path"
        ) from None
    path = local_artifact_path(info.artifact_uri)
    if path is None or not path.exists():
        raise UserError(
            f"ranker {info.version!r} has artifact {info.artifact_uri!r}, which is not a local "
            "path that exists here; copy the artifact or register its local path"
        )
    alpha = _checked_alpha((info.metrics or {}).get("fusion_alpha"), f"ranker {info.version!r}")
    return ResolvedRanker(str(path), info.version, fusion_alpha=alpha, training_alpha=alpha)


def trained_on_users(model_path: str | None) -> str | None:
    """Whose logs a hybrid model folder was trained on (its card's `options.users`: "train",
    or "all" when the held-out users' logs were in it too); None for anything else. An
    evaluation on held-out users records it, so a same-log run is never read as a
    held-out-user one."""
    card = _card(Path(model_path)) if model_path else None
    if card is None:
        return None
    options = card.get("options") or {}
    if not isinstance(options, dict):
        raise _unreadable(Path(model_path or "") / "card.json", "'options' is not an object")
    return str(options.get("users", "train"))


def heldout_rule(model_path: str | None) -> tuple[float, int] | None:
    """(fraction, seed) of the users a model never trained on (`recsys.eval.instances.
    is_heldout`), from its card; a committee's when its members agree. None when the card
    does not say, or when the model read every user's logs (`trained_on_users` "all")."""
    if not model_path:
        return None
    from ranking.backends.committee import is_committee_dir, read_committee

    path = Path(model_path)
    if is_committee_dir(path):
        rules = {heldout_rule(m) for m in read_committee(path).members}
        return rules.pop() if len(rules) == 1 else None
    card = _card(path)
    if card is None or trained_on_users(model_path) == "all":
        return None
    data = card.get("data")
    try:
        return float(data["heldout_fraction"]), int(data["seed"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def _folder_alpha(path: Path) -> float | None:
    """A model folder's measured serving weight (card.json `fusion_alpha`)."""
    card = _card(path)
    if card is None:
        return None
    return _checked_alpha(card.get("fusion_alpha"), str(path / "card.json"))


def _card(folder: Path) -> dict[str, Any] | None:
    """A model folder's card.json as a dict; None when it has none."""
    path = folder / "card.json"
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(card, dict):
        raise _unreadable(path, "not a JSON object")
    return card


def _unreadable(card: Path, why: object) -> UserError:
    return UserError(f"{card} is not a readable model card ({why}); fix or remove it")


def _checked_alpha(alpha: object, where: str) -> float | None:
    from ranking.types import is_valid_alpha

    if alpha is None:
        return None
    if not is_valid_alpha(alpha):
        raise UserError(
            f"{where} has fusion_alpha {alpha!r}, which is not a finite number >= 0; "
            "set RECSYS_FUSION_ALPHA to override it"
        )
    return float(alpha)  # type: ignore[arg-type]
