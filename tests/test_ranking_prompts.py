"""Prompt wording per task family, signal rendering, and the single-token label set."""

import pytest

from ranking.prompts import (
    REASON_SYSTEM_PROMPT,
    candidate_line,
    elimination_prompt,
    label_prompt,
    label_set,
    labels_for,
    ranking_prompt,
    reason_prompt,
)
from ranking.types import Candidate, RankRequest

CANDS = (
    Candidate("1", "Star Wars (1977)", score=0.8, signals={"cf_rank": 3, "popularity": 583}),
    Candidate("2", "Heat (1995)"),
)


def request(task, **kw):
    query = "how do vaccines work" if task.startswith(("passage", "router")) else None
    return RankRequest(
        task=task, candidates=CANDS, history=("Toy Story (1995)",), query=query, **kw
    )


@pytest.mark.parametrize(
    ("task", "phrases"),
    [
        (
            "rec-movie",
            [
                "I've watched the following movies in the past, in order:",
                "1. Toy Story (1995)",
                "Please select the one movie that is least likely to be my next watch.",
            ],
        ),
        ("rec-music", ["listened to the following albums", "least likely to be my next listen"]),
        ("rec-game", ["played the following games", "least likely to be my next play"]),
        ("passage", ["Query: how do vaccines work", "least relevant passage given the query"]),
        ("router-perf", ["candidate LLMs", "least performance-efficient LLM"]),
        ("router-balance", ["least balanced (between performance and cost) LLM"]),
        ("router-cost", ["least cost-efficient LLM"]),
    ],
)
def test_task_family_wording(task, phrases):
    text = reason_prompt(request(task), CANDS)
    for phrase in phrases:
        assert phrase in text
    assert "<answer>" in text and "- Star Wars (1977)" in text


def test_label_modes_list_labels_and_ask_for_them():
    req = request("rec-movie")
    for fn in (label_prompt, elimination_prompt, ranking_prompt):
        text = fn(req, CANDS, ["A", "B"])
        assert "[A] Star Wars (1977)\n[B] Heat (1995)" in text
    assert "in elimination order" in elimination_prompt(req, CANDS, ["A", "B"])
    assert "best first" in ranking_prompt(req, CANDS, ["A", "B"])
    assert "think" in REASON_SYSTEM_PROMPT and "<answer> </answer>" in REASON_SYSTEM_PROMPT


def test_signals_rendered_only_on_request():
    assert candidate_line(CANDS[0], "rec-movie", show_signals=False) == "Star Wars (1977)"
    line = candidate_line(CANDS[0], "rec-movie", show_signals=True)
    assert line == "Star Wars (1977) (CF rank 3, watched by 583 people, retrieval score 0.8)"
    assert "played by 583 people" in candidate_line(CANDS[0], "rec-game", show_signals=True)
    assert candidate_line(CANDS[1], "rec-movie", show_signals=True) == "Heat (1995)"
    text = elimination_prompt(request("rec-movie", show_signals=True), CANDS, ["A", "B"])
    assert "CF rank 3, watched by 583 people" in text


def test_candidate_text_is_one_line():
    c = Candidate("x", "A title\nwith a newline")
    assert candidate_line(c, "rec-movie", show_signals=False) == "A title with a newline"


def test_smollm2_label_set(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    labels = label_set(tok)
    assert [lab for lab, _ in labels[:3]] == ["A", "B", "C"]
    assert len(labels) >= 500  # MAX_CANDIDATES
    ids = [t for _, t in labels]
    assert len(set(ids)) == len(ids)
    for lab, tid in labels:
        assert tok.encode(" " + lab, add_special_tokens=False) == [tid]
    assert len(tok.encode(" 10", add_special_tokens=False)) > 1  # why numbers are not labels
    assert [lab for lab, _ in labels_for(tok, 28)][-2:] == ["AA", "AB"]
