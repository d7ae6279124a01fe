"""Fake LM backends for tests: scripted answers and garbage, no model weights.

* :class:`WordTokenizer` — a whitespace-aware toy tokenizer (" A" is one token), enough for
  prompts, labels and chat formatting.
* :class:`ScriptedBackend` — `generate` returns scripted texts in turn; `next_token_logprobs`
  returns the log-probs a function gives (default: uniform).
* :class:`GarbageBackend` — answers what a broken model could: random text, names not in
  the list, duplicates, nothing, NaN / -inf / wrong-length log-prob arrays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ranking.backends.base import Generation, LMBackend

_PIECE = re.compile(r"\s*\S+|\s+")


class WordTokenizer:
    """Tokens are whitespace-prefixed words; ids are assigned on first sight."""

    eos_token = "<eos>"
    pad_token = "<eos>"
    pad_token_id = 0
    eos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<eos>": 0}
        self.inverse: dict[int, str] = {0: "<eos>"}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.vocab)
            self.inverse[self.vocab[piece]] = piece
        return self.vocab[piece]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self._id(p) for p in _PIECE.findall(text)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.inverse.get(int(i), "") for i in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return text + ("<assistant>\n" if add_generation_prompt else "")

    def __len__(self) -> int:
        return len(self.vocab)


LogprobFn = Callable[[Sequence[int], Sequence[int]], np.ndarray]


def _uniform(context: Sequence[int], allowed: Sequence[int]) -> np.ndarray:
    return np.full(len(allowed), -np.log(len(allowed)))


class ScriptedBackend(LMBackend):
    """Deterministic answers for tests. `texts` are returned by `generate` in turn (cycling);
    `logprob_fn(context, allowed)` gives the raw log-probs of each constrained step."""

    def __init__(
        self,
        texts: Sequence[str] = ("<answer></answer>",),
        logprob_fn: LogprobFn = _uniform,
        model_id: str = "scripted",
    ) -> None:
        self.tokenizer = WordTokenizer()
        self.model_id = model_id
        self.texts = list(texts)
        self.logprob_fn = logprob_fn
        self.calls: list[tuple[str, int]] = []  # (kind, batch size)
        self._next = 0

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=None, **_):
        self.calls.append(("generate", len(prompts)))
        out = []
        for _p in prompts:
            text = self.texts[self._next % len(self.texts)]
            self._next += 1
            out.append(Generation(text, len(self.tokenizer.encode(text))))
        return out

    def next_token_logprobs(self, contexts, allowed):
        self.calls.append(("logprobs", len(contexts)))
        return [
            np.asarray(self.logprob_fn(c, a), dtype=float)
            for c, a in zip(contexts, allowed, strict=False)
        ]


class GarbageBackend(LMBackend):
    """A backend that emits what a broken model could, drawn from a seeded RNG."""

    def __init__(self, seed: int = 0, candidate_texts: Sequence[str] = ()) -> None:
        self.tokenizer = WordTokenizer()
        self.model_id = "garbage"
        self.rng = np.random.default_rng(seed)
        self.candidate_texts = list(candidate_texts)

    def _text(self) -> str:
        r = self.rng
        names = self.candidate_texts or ["nothing"]
        pick = names[int(r.integers(len(names)))]
        options = [
            "",
            "no tags at all",
            "<answer></answer>",
            "<answer>Not A Real Title 12345</answer>",
            f"<answer>{pick}</answer><answer>{pick}</answer>",
            f"<think>hmm</think><answer>{pick.upper()}!!</answer>",
            f"<answer>{pick} and also {names[0]}",
            "<answer>" + "".join(chr(int(c)) for c in r.integers(33, 126, 20)) + "</answer>",
            "<answer>\u00e9\u00e8 \u4e2d\u6587</answer>",
        ]
        return options[int(r.integers(len(options)))]

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=None, **_):
        return [Generation(t, len(t.split())) for t in (self._text() for _ in prompts)]

    def next_token_logprobs(self, contexts, allowed):
        out = []
        for a in allowed:
            kind = int(self.rng.integers(6))
            n = len(a)
            if kind == 0:
                out.append(np.full(n, np.nan))
            elif kind == 1:
                out.append(np.full(n, -np.inf))
            elif kind == 2:
                out.append(self.rng.normal(size=n + int(self.rng.integers(1, 3))))  # wrong length
            elif kind == 3:
                out.append(np.full(n, np.inf))
            elif kind == 4:
                out.append(np.array([]))
            else:
                out.append(self.rng.normal(scale=5.0, size=n))
        return out
