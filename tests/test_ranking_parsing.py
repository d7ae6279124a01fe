"""The reason-mode answer parser on the answer forms the paper's models produce."""

import pytest

from ranking.parsing import (
    extract_answer,
    fallback_choice,
    lcs_length,
    match_answer,
    parse_choice,
)
from ranking.types import Candidate

CANDS = [
    Candidate("1", "Toy Story (1995)", score=0.9),
    Candidate("2", "Heat (1995)", score=0.1),
    Candidate("3", "Star Wars (1977)", score=0.5),
    Candidate("4", "The Empire Strikes Back (1980)", score=0.7),
]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<think>x</think><answer>Heat (1995)</answer>", "Heat (1995)"),
        ("<answer>a</answer> more <answer> b </answer>", "b"),  # the LAST block
        ("<think>..</think>\n<answer>\nStar Wars (1977)\n</answer>", "Star Wars (1977)"),
        ("<answer>Heat (1995)", "Heat (1995)"),  # unclosed last block (hit the token cap)
        ("<ANSWER>Heat</ANSWER>", "Heat"),
        ("no tags here", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("answer", "index", "how"),
    [
        ("Heat (1995)", 1, "exact"),
        ("heat (1995)", 1, "exact"),  # case
        ('"Heat (1995)".', 1, "exact"),  # quotes and a full stop
        ("- Star Wars (1977)", 2, "exact"),  # list marker
        ("2. Star Wars (1977)", 2, "exact"),  # numbered
        ("[C] Star Wars (1977)", 2, "exact"),  # label
        ("Star Wars (1997)", 2, "fuzzy"),  # one typo: LCS 15/16 >= 0.9
        ("The Empire Strikes Back(1980)", 3, "fuzzy"),  # a missing space
        ("I would drop Toy Story since it is old", 0, "similar"),  # TF-IDF
        ("empire", 3, "similar"),
    ],
)
def test_match_answer_forms(answer, index, how):
    m = match_answer(answer, CANDS)
    assert m is not None
    assert (m.index, m.how) == (index, how)


@pytest.mark.parametrize("answer", [None, "", "   ", "zzzz qqqq", "!!!"])
def test_unmatched_answers_return_none(answer):
    assert match_answer(answer, CANDS) is None


def test_long_answer_is_not_a_fuzzy_match_of_every_title():
    # a rambling answer contains every short title as a subsequence; LCS uses the longer length
    rambling = "I think " + " ".join(c.text for c in CANDS) + " are all fine"
    m = match_answer(rambling, CANDS)
    assert m is None or m.how == "similar"


def test_fallback_rule_lowest_score_then_last():
    assert fallback_choice(CANDS) == 1  # Heat has the lowest retrieval score
    unscored = [Candidate("a", "x"), Candidate("b", "y")]
    assert fallback_choice(unscored) == 1
    m = parse_choice("<answer>nothing like it</answer>", CANDS)
    assert (m.index, m.how) == (1, "fallback")


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [("", "abc", 0), ("abc", "abc", 3), ("abcbdab", "bdcaba", 4), ("heat", "the eat", 4)],
)
def test_lcs_length(a, b, n):
    assert lcs_length(a, b) == n == lcs_length(b, a)
