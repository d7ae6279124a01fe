"""Parse a `reason`-mode answer into one of the remaining candidates.

The paper's procedure (arXiv 2506.21638, Sec. 3): take the text of the LAST
``<answer> ... </answer>`` block, then match it against the remaining candidates

1. ``exact``   — equal after normalisation (case, whitespace, quotes, list markers);
2. ``fuzzy``   — longest common subsequence with a candidate >= 0.9 of the length (of the
   longer of the two strings, so a long answer does not match every short title; the best
   ratio wins, ties go to the longer candidate);
3. ``similar`` — the candidate most similar by TF-IDF cosine (word uni- and bigrams,
   scikit-learn), when the answer shares at least one word with it;
4. ``fallback`` — nothing matched (no answer, empty answer, unrelated text): the rule
   documented in :func:`fallback_choice` picks the candidate and the engine counts the
   answer in ``RankResult.invalid_answers``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ranking.types import Candidate

FUZZY_THRESHOLD = 0.9

_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_MARKER_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\[[A-Za-z]{1,2}\]|[A-Za-z]{1,2}[.)])\s+")
_QUOTES = "\"'`“”‘’«»"


@dataclass(frozen=True)
class Match:
    index: int  # into the candidates given
    how: str  # exact | fuzzy | similar | fallback


def extract_answer(text: str) -> str | None:
    """The content of the last <answer> block (an unclosed last block counts), else None."""
    found = _ANSWER_RE.findall(text or "")
    if not found:
        return None
    return found[-1].strip()


def normalise(text: str) -> str:
    text = " ".join(text.split()).strip()
    text = _MARKER_RE.sub("", text)
    text = text.strip(_QUOTES + " .,;:!").strip()
    return text.casefold()


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(|a||b|/w)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def match_answer(answer: str | None, candidates: Sequence[Candidate]) -> Match | None:
    """Exact, then fuzzy, then TF-IDF similar; None when nothing matches."""
    if answer is None:
        return None
    ans = normalise(answer)
    if not ans:
        return None
    texts = [normalise(c.text) for c in candidates]
    for i, t in enumerate(texts):
        if t == ans:
            return Match(i, "exact")
    best, best_key = None, (0.0, 0)
    for i, t in enumerate(texts):
        if not t:
            continue
        ratio = lcs_length(t, ans) / max(len(t), len(ans))
        if ratio >= FUZZY_THRESHOLD and (ratio, len(t)) > best_key:
            best, best_key = i, (ratio, len(t))
    if best is not None:
        return Match(best, "fuzzy")
    similar = most_similar(ans, texts)
    return None if similar is None else Match(similar, "similar")


def most_similar(answer: str, texts: Sequence[str]) -> int | None:
    """Index of the text with the highest word TF-IDF cosine to the answer; None when the
    answer shares no word with any text (an unrelated answer must not pick a candidate)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import linear_kernel

    try:
        mat = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform([*texts, answer])
    except ValueError:  # empty vocabulary: no word of two or more characters anywhere
        return None
    sims = linear_kernel(mat[len(texts)], mat[: len(texts)]).ravel()
    best = int(sims.argmax())
    return best if sims[best] > 0 else None


def fallback_choice(candidates: Sequence[Candidate]) -> int:
    """Documented rule when an answer names no candidate: eliminate the candidate with the
    lowest retrieval score; without scores, the last one in the list (the retrieval order's
    weakest)."""
    scored = [(c.score, i) for i, c in enumerate(candidates) if c.score is not None]
    if scored:
        return min(scored, key=lambda s: (s[0], -s[1]))[1]
    return len(candidates) - 1


def parse_choice(text: str, candidates: Sequence[Candidate]) -> Match:
    """The candidate a generated text names, never None: falls back by :func:`fallback_choice`."""
    found = match_answer(extract_answer(text), candidates)
    return found if found is not None else Match(fallback_choice(candidates), "fallback")
