"""`incremental` mode (the default): IRanker's elimination as ONE constrained sequence.

The prompt lists every candidate once with a single-token label; the assistant's answer
starts with "Elimination order:" and then the model emits labels, each step one token
constrained to the labels still in play. Every step extends the previous context by one
token, so a backend with KV-cache reuse pays about one prefill for the whole ranking.

:func:`build_sequence` is the public description of that token sequence, for teacher
forcing (RL): a whole trajectory e1, e2, ... is the token list

    prompt_ids + [label_ids[e1]] + sep_ids + [label_ids[e2]] + sep_ids + ...

and the distribution of step t is the next-token distribution after the first
``len(prompt_ids) + t * (1 + len(sep_ids))`` tokens, restricted to the labels of the
candidates not yet eliminated and renormalised — exactly what the engine samples from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ranking.backends.base import LMBackend
from ranking.modes.base import Trace
from ranking.modes.constrained import ConstrainedMode
from ranking.prompts import (
    ELIMINATION_ANSWER_PREFIX,
    PAPER_STYLE,
    elimination_prompt,
    item_labels,
    labels_for,
    style_of,
)
from ranking.types import RankRequest


@dataclass(frozen=True)
class LabelSequence:
    """The token layout of a single-sequence ranking of one request.

    `ids[i]` (candidate id) is named by label `labels[i]`, a single token `label_ids[i]`;
    `prompt` is the chat-formatted text whose tokens are `prompt_ids` (it ends with the
    answer prefix); `sep_ids` follow every emitted label (empty: labels carry their space)."""

    ids: tuple[str, ...]
    labels: tuple[str, ...]
    label_ids: tuple[int, ...]
    prompt: str
    prompt_ids: tuple[int, ...]
    sep_ids: tuple[int, ...] = ()

    def context(self, chosen: list[int]) -> list[int]:
        """The prompt followed by the labels of the candidates chosen so far (indices)."""
        out = list(self.prompt_ids)
        for i in chosen:
            out.append(self.label_ids[i])
            out.extend(self.sep_ids)
        return out


class _TokenizerOnly:
    """Lets a bare Hugging Face tokenizer stand in for a backend when building sequences
    (training code has the torch model and its tokenizer, not a backend)."""

    chat_prompt = LMBackend.chat_prompt
    encode = LMBackend.encode
    prompt_style = PAPER_STYLE

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer


def _as_backend(backend_or_tokenizer):
    if hasattr(backend_or_tokenizer, "chat_prompt"):
        return backend_or_tokenizer
    return _TokenizerOnly(backend_or_tokenizer)


def label_sequence(request: RankRequest, backend, prompt_fn, answer_prefix: str):
    backend = _as_backend(backend)
    style = style_of(backend, request)
    labelled = item_labels(backend.tokenizer, style, request.candidates) or labels_for(
        backend.tokenizer, len(request.candidates)
    )
    labels = tuple(lab for lab, _ in labelled)
    text = backend.chat_prompt(prompt_fn(request, request.candidates, labels, style))
    text += answer_prefix
    return LabelSequence(
        ids=tuple(request.ids),
        labels=labels,
        label_ids=tuple(tok for _, tok in labelled),
        prompt=text,
        prompt_ids=tuple(backend.encode(text)),
    )


def build_sequence(request: RankRequest, backend) -> LabelSequence:
    """The incremental-mode sequence of `request` (see module doc) for an LMBackend, or for a
    bare Hugging Face tokenizer (same ids: the backend only adds the chat template)."""
    return label_sequence(request, backend, elimination_prompt, ELIMINATION_ANSWER_PREFIX)


class IncrementalMode(ConstrainedMode):
    name = "incremental"
    eliminates = True
    speculative = True

    def label_of(self, prepared, index: int) -> tuple[str, int]:
        return prepared.labels[index], prepared.label_ids[index]

    def prepare(self, request: RankRequest, backend: LMBackend) -> LabelSequence:
        return build_sequence(request, backend)

    def step_input(self, trace: Trace, prepared, backend: LMBackend):
        seq: LabelSequence = prepared
        return (
            seq.context(trace.chosen),
            [seq.label_ids[i] for i in trace.remaining],
            [seq.labels[i] for i in trace.remaining],
        )

    def shared_prompt(self, prepared) -> str | None:
        return prepared.prompt
