"""Items newer than a hybrid model (ranking.hybrid, `PromptStyle.for_request`): they are
written with new-item tokens that all carry the catalogue's mean vector, so the prompt
keeps the layout the model was trained on, each new candidate is still its own label, and
serving stays exact (served steps = trained steps, forced-order propensities)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ranking.engine import Ranker
from ranking.hybrid import NEW_ITEM_FORMAT, NEW_ITEM_SLOTS
from ranking.modes.incremental import build_sequence
from ranking.prompts import PAPER_STYLE
from ranking.types import MAX_CANDIDATES
from tests.test_hybrid import assert_served_steps_are_trained_steps, fresh_hybrid, request

NEW = [NEW_ITEM_FORMAT.format(k) for k in range(3)]


def test_new_candidates_get_their_own_tokens_and_keep_the_trained_layout(tiny_model_dir):
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    seq = build_sequence(request(["1", "x", "2", "y"], ["3", "z", "x"]), backend)
    # item labels, not letters; new candidates first in order of appearance, then history
    assert seq.labels == ("<|item:1|>", NEW[0], "<|item:2|>", NEW[1])
    assert all(t >= hybrid.base_vocab for t in seq.label_ids)
    assert NEW[2] in seq.prompt  # "z", a new history item
    assert seq.prompt.count(NEW[0]) == 2  # "x" is the same token in history and candidates
    assert "Movie" not in seq.prompt  # no titles: the layout the model was trained on
    known = build_sequence(request(["1", "4", "2", "5"], ["3", "6", "7"]), backend)
    assert len(seq.prompt_ids) == len(known.prompt_ids)  # one token per item, as trained


def test_every_request_size_has_enough_new_item_tokens(tiny_model_dir):
    backend, _ = fresh_hybrid(tiny_model_dir)
    assert NEW_ITEM_SLOTS > MAX_CANDIDATES
    cands = [f"n{k}" for k in range(30)]
    seq = build_sequence(request(cands, [f"h{k}" for k in range(5)]), backend)
    assert len(set(seq.labels)) == 30 and all(lab.startswith("<|new item") for lab in seq.labels)


def test_a_style_without_new_item_tokens_is_unchanged() -> None:
    req = request(["x", "y"], ["z"])
    assert PAPER_STYLE.for_request(req) is PAPER_STYLE


def test_new_items_read_the_catalogues_mean_vector_and_nothing_else(tiny_model_dir):
    """New candidates are indistinguishable to the model (one vector): a ranking and the
    same ranking with two new ids swapped are equally likely. Moving the catalogue's mean
    (every vector but item 1's) changes the probabilities."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    with torch.no_grad():  # soft tokens that matter well beyond the tolerance
        hybrid.projector.net[2].weight.mul_(100)
        hybrid.projector.out.weight.mul_(100)
    ranker = Ranker(backend, batch_size=2)
    req = request(["1", "x", "2", "y"], ["3", "4"], temperature=1.0)
    orders = [["x", "1", "y", "2"], ["y", "1", "x", "2"], ["2", "y", "1", "x"]]
    swapped = [[{"x": "y", "y": "x"}.get(i, i) for i in o] for o in orders]
    lp = np.array(ranker.log_probabilities([req] * 3, orders))
    np.testing.assert_allclose(lp[0], lp[1], atol=1e-5)
    np.testing.assert_allclose(lp, ranker.log_probabilities([req] * 3, swapped), atol=1e-5)
    assert abs(lp[0] - lp[2]) > 1e-3  # the probabilities are not all alike
    new_row = torch.tensor([len(hybrid.item_ids), 0])
    torch.testing.assert_close(hybrid.vectors_at(new_row), torch.stack(
        [hybrid.vectors.mean(0), hybrid.vectors[0]]))  # fmt: skip
    with torch.no_grad():
        hybrid.vectors[1:] += 2.0
    backend.clear_cache()
    moved = np.array(ranker.log_probabilities([req] * 3, orders))
    assert np.abs(moved - lp).max() > 1e-3


@pytest.mark.parametrize("split", [True, False])
def test_served_steps_equal_the_trained_steps_with_new_items(tiny_model_dir, split) -> None:
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    backend.split_hybrid(split)
    req = request(["1", "x", "2", "y", "3"], ["z", "4"], temperature=1.0, seed=3)
    res = assert_served_steps_are_trained_steps(backend, hybrid, req)
    (forced,) = Ranker(backend, batch_size=1).log_probabilities(
        [dataclasses.replace(req, temperature=1.0)], [res.order]
    )
    assert forced == pytest.approx(res.log_propensity, abs=1e-4)


def scored_request(cands: list[str], scores: list[float], **kw):
    req = request(cands, ["3", "4"], **kw)
    with_scores = tuple(dataclasses.replace(c, score=s)
                        for c, s in zip(req.candidates, scores, strict=True))  # fmt: skip
    return dataclasses.replace(req, candidates=with_scores)


def test_fusion_abstains_on_new_items_and_stays_exact(tiny_model_dir) -> None:
    """With fusion the ranker gives no opinion of its own on a new item (it would rank it
    as the rare training items, negatives): its step log-probability is the mean of the
    others', so its score places it. The ranking's propensity stays exact."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    with torch.no_grad():  # an LM with strong opinions
        hybrid.projector.out.weight.mul_(100)
    ranker = Ranker(backend, batch_size=2)
    cands, scores = ["1", "x", "2", "y"], [0.1, 0.9, 0.4, 0.2]
    alone = ranker.rank(scored_request(cands, scores, fusion_alpha=0.0))
    assert alone.fusion_abstained == ()
    fused_req = scored_request(cands, scores, fusion_alpha=1.0, temperature=1.0, seed=5)
    fused = ranker.rank(fused_req)
    assert fused.fusion_abstained == ("x", "y")
    (forced,) = ranker.log_probabilities([fused_req], [fused.order])
    assert forced == pytest.approx(fused.log_propensity, abs=1e-5)
