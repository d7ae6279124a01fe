"""Prompts: one template per task family, in the wording of the IRanker paper (arXiv 2506.21638).

A prompt has three parts that every mode shares:

* the *context*: the user's history (recommendation) or the query (passage, router);
* the *candidate list*: one line per candidate, with a label (``[A] Toy Story (1995)``) in
  the label-based modes, a bullet in ``reason`` mode (the paper's model answers with the
  title);
* the *instruction*: what to answer, which depends on the mode.

Labels are the strings ``A`` .. ``Z``, then the two-letter strings (``AA``, ``AB`` ..) and
then the lower-case ones that the tokenizer encodes, with a leading space, as ONE token.
The SmolLM2 tokenizer has 26 + 375 + 345 of them, so a single constrained decoding step picks
a candidate among up to several hundred (digits are split one per token, so numbers would
need multi-token labels). See :func:`label_set`.
"""

from __future__ import annotations

import dataclasses
import string
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ranking.errors import RequestError
from ranking.types import Candidate, RankRequest

# The paper's system instruction (DeepSeek-R1 style), used by `reason` mode.
REASON_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>."
)


@dataclass(frozen=True)
class TaskWording:
    """The nouns and phrases of one task family."""

    item: str  # "movie"
    items: str  # "movies"
    least: str  # "least likely to be my next watch"
    most: str  # "most likely to be my next watch"
    consumed_by: str = ""  # "watched by" (for the popularity signal)


_REC = {
    "rec-movie": TaskWording(
        "movie",
        "movies",
        "least likely to be my next watch",
        "most likely to be my next watch",
        "watched by",
    ),
    "rec-music": TaskWording(
        "album",
        "albums",
        "least likely to be my next listen",
        "most likely to be my next listen",
        "listened to by",
    ),
    "rec-game": TaskWording(
        "game",
        "games",
        "least likely to be my next play",
        "most likely to be my next play",
        "played by",
    ),
}
_HISTORY_VERB = {"rec-movie": "watched", "rec-music": "listened to", "rec-game": "played"}
_ROUTER_CRITERION = {
    "router-perf": "performance-efficient",
    "router-balance": "balanced (between performance and cost)",
    "router-cost": "cost-efficient",
}


def task_wording(task: str) -> TaskWording:
    if task in _REC:
        return _REC[task]
    if task == "passage":
        return TaskWording(
            "passage",
            "passages",
            "least relevant passage to the query",
            "most relevant passage to the query",
        )
    if task in _ROUTER_CRITERION:
        crit = _ROUTER_CRITERION[task]
        return TaskWording("LLM", "LLMs", f"least {crit} LLM", f"most {crit} LLM")
    raise RequestError(f"unknown task {task!r}")


# ---------------------------------------------------------------- prompt styles


TEMPLATES = ("paper", "short")


@dataclass(frozen=True)
class PromptStyle:
    """How a prompt shows the request (a property of the model: `LMBackend.prompt_style`).

    * `template`: "paper" (the IRanker paper's wording) or "short" (rec tasks: a one-line
      instruction first, so consecutive requests share the longest prefix, then the
      history on one line and one short line per candidate);
    * `title_chars`: titles cut to this many characters (None: whole titles; 0: no title
      for an item that has a soft token);
    * `item_tokens`: catalogue id -> the text of the item's soft token (ranking.hybrid),
      written before its title; items without one are shown by title only;
    * `chat`: wrap the prompt in the model's chat template (False for a model fine-tuned on
      bare prompts: the template's system prompt is ~30 tokens of every request);
    * `item_labels`: name candidates by their soft tokens instead of letters, when every
      candidate has one (the answer is then a sequence of item tokens);
    * `new_item_tokens`: tokens a hybrid model keeps for items newer than its vectors
      (`for_request` gives each such item of a request one; ranking.hybrid).

    With soft tokens and no titles the short template is compact: the history is the
    tokens back to back, and so are the candidates when they are their own labels
    (`item_labels`); with letter labels a candidate is its label token followed by its soft
    token (" A<|item:50|>").
    """

    template: str = "paper"
    title_chars: int | None = None
    item_tokens: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    chat: bool = True  # False: no chat template around the prompt (a model trained without)
    item_labels: bool = False  # True: a candidate's label is its soft token (ranking.hybrid)
    new_item_tokens: tuple[str, ...] = field(default=(), hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise RequestError(f"unknown prompt template {self.template!r}; use {TEMPLATES}")
        if self.title_chars is not None and self.title_chars < 0:
            raise RequestError(f"title_chars must be >= 0 or None, got {self.title_chars}")

    def for_request(self, request: RankRequest) -> PromptStyle:
        """This style with a new-item token for each item of a rec request that has no soft
        token of its own: the candidates first, each its own (they may be labels), then the
        history's. Without them one item newer than a hybrid model would turn the whole
        prompt into letters and titles, a layout the model was never trained on; every
        new-item token carries the same vector (ranking.hybrid), so the model reads each as
        "an item I know nothing about" and the rest of the prompt stays as trained."""
        if not self._writes_new_items(request):
            return self
        ids = [c.id for c in request.candidates] + list(request.history_ids)
        unknown = [i for i in dict.fromkeys(ids) if i not in self.item_tokens]
        if not unknown:
            return self
        last = len(self.new_item_tokens) - 1  # past it (history only) any token will do
        new = {i: self.new_item_tokens[min(k, last)] for k, i in enumerate(unknown)}
        return dataclasses.replace(self, item_tokens=ChainMap(new, self.item_tokens))

    def unknown(self, request: RankRequest) -> list[bool] | None:
        """Per candidate: True where a style with new-item tokens has no soft token of its
        own for it (the model knows nothing of it: fusion abstains, ranking.fusion); None
        when the style has none or the request is not a rec task."""
        if not self._writes_new_items(request):
            return None
        return [c.id not in self.item_tokens for c in request.candidates]

    def _writes_new_items(self, request: RankRequest) -> bool:
        """New-item tokens apply: the style has them and the request names catalogue items."""
        return bool(self.new_item_tokens) and request.task in _REC

    def item(self, item_id: str | None, title: str) -> str:
        """One item as the prompt shows it: soft token (if any), then the (cut) title."""
        token = self.item_tokens.get(item_id or "") if item_id is not None else None
        text = " ".join(title.split())
        if self.title_chars is not None:
            text = "" if (self.title_chars == 0 and token) else text[: self.title_chars]
        return f"{token}{' ' + text if text else ''}" if token else text


PAPER_STYLE = PromptStyle()


def style_of(backend: Any, request: RankRequest | None = None) -> PromptStyle:
    """The prompt style of a backend (or tokenizer stand-in); the paper's when it has none.
    With `request`: as that request is written (`PromptStyle.for_request`)."""
    style = getattr(backend, "prompt_style", None) or PAPER_STYLE
    return style if request is None else style.for_request(request)


# ---------------------------------------------------------------- candidate lines and signals


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_signals(candidate: Candidate, task: str) -> str:
    """The candidate's retrieval facts as a short phrase, e.g. "CF rank 3, watched by 583 people".

    Known signal names get a readable phrase; others are rendered "name value"."""
    wording = task_wording(task)
    parts: list[str] = []
    for key, value in candidate.signals.items():
        k = key.lower()
        if k in ("cf_rank", "rank", "retrieval_rank"):
            parts.append(f"CF rank {_fmt(value)}")
        elif k in ("popularity", "n_users", "count", "views") and wording.consumed_by:
            parts.append(f"{wording.consumed_by} {_fmt(value)} people")
        else:
            parts.append(f"{key.replace('_', ' ')} {_fmt(value)}")
    if candidate.score is not None and "score" not in candidate.signals:
        parts.append(f"retrieval score {_fmt(candidate.score)}")
    return ", ".join(parts)


def candidate_line(
    candidate: Candidate, task: str, show_signals: bool, style: PromptStyle = PAPER_STYLE
) -> str:
    text = style.item(candidate.id if task in _REC else None, candidate.text)
    if show_signals:
        facts = render_signals(candidate, task)
        if facts:
            return f"{text} ({facts})"
    return text


# ---------------------------------------------------------------- labels


_LABEL_STRINGS = (
    list(string.ascii_uppercase)
    + [a + b for a in string.ascii_uppercase for b in string.ascii_uppercase]
    + list(string.ascii_lowercase)
    + [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
)
_LABEL_CACHE: dict[int, tuple[Any, list[tuple[str, int]]]] = {}


def label_set(tokenizer: Any) -> list[tuple[str, int]]:
    """(label, token id) pairs, in presentation order, where " label" is a single token.

    Computed once per tokenizer object."""
    cached = _LABEL_CACHE.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    out: list[tuple[str, int]] = []
    seen: set[int] = set()
    for lab in _LABEL_STRINGS:
        ids = tokenizer.encode(" " + lab, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in seen:
            seen.add(ids[0])
            out.append((lab, int(ids[0])))
    _LABEL_CACHE[id(tokenizer)] = (tokenizer, out)
    return out


def item_labels(
    tokenizer: Any, style: PromptStyle, candidates: Sequence[Candidate]
) -> list[tuple[str, int]] | None:
    """(label, token id) per candidate when the style names candidates by their soft tokens
    and every candidate has one; None otherwise (letters are used)."""
    if not style.item_labels:
        return None
    tokens = [style.item_tokens.get(c.id) for c in candidates]
    if any(t is None for t in tokens) or len(set(tokens)) != len(tokens):
        return None
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return list(zip(tokens, (int(i) for i in ids), strict=True))  # type: ignore[arg-type]


def labels_for(tokenizer: Any, n: int) -> list[tuple[str, int]]:
    """The first n labels; RequestError when the tokenizer has fewer single-token labels."""
    labels = label_set(tokenizer)
    if n > len(labels):
        raise RequestError(
            f"too many candidates ({n}) for this model: its tokenizer has {len(labels)} "
            "single-token labels; rank at most that many per request (or use mode 'reason')"
        )
    return labels[:n]


# ---------------------------------------------------------------- prompts


def _history_shown(request: RankRequest, style: PromptStyle) -> list[str]:
    """The history items as the style shows them (by id when the request has ids)."""
    ids = request.history_ids or (None,) * len(request.history)
    return [style.item(i, h) for i, h in zip(ids, request.history, strict=True)]


def _listed(labels: Sequence[str | None], texts: Sequence[str]) -> list[str]:
    """One candidate per line: "[A] text" with labels, "- text" without."""
    return [
        (f"[{lab}] " if lab is not None else "- ") + text
        for lab, text in zip(labels, texts, strict=True)
    ]


def _context_block(request: RankRequest, style: PromptStyle = PAPER_STYLE) -> str:
    if request.task in _REC:
        wording = _REC[request.task]
        verb = _HISTORY_VERB[request.task]
        if not request.history:
            head = f"I have not {verb} any {wording.items} yet."
        else:
            shown = _history_shown(request, style)
            lines = "\n".join(f"{i}. {h}" for i, h in enumerate(shown, 1))
            head = f"I've {verb} the following {wording.items} in the past, in order:\n{lines}"
        if request.query:
            head += f"\n\nWhat I am looking for: {request.query}"
        return head
    if request.task == "passage":
        return f"Query: {request.query}"
    return f"Query: {request.query or '(no query text)'}"


def _candidate_block(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str] | None,
    style: PromptStyle = PAPER_STYLE,
) -> str:
    wording = task_wording(request.task)
    # no count in the header: consecutive `score` prompts then share everything up to the
    # first line that changed, and the backend reuses that prefix's KV cache
    if request.task in _REC:
        head = f"Now there are candidate {wording.items} that I can choose from:"
    elif request.task == "passage":
        head = "Here are the candidate passages:"
    else:
        head = "Here are the candidate LLMs, with their prices:"
    texts = [candidate_line(c, request.task, request.show_signals, style) for c in candidates]
    return head + "\n" + "\n".join(_listed(labels or [None] * len(candidates), texts))


def _select_sentence(request: RankRequest) -> str:
    w = task_wording(request.task)
    if request.task in _REC:
        return f"Please select the one {w.item} that is {w.least}."
    if request.task == "passage":
        return "Please select the least relevant passage given the query."
    return f"Please select the {w.least} for this query."


def _assemble(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str] | None,
    instruction: str,
    style: PromptStyle = PAPER_STYLE,
    short_instruction: str | None = None,
) -> str:
    """Context, candidate list, instruction: the shape every mode's prompt shares (the
    short template puts a short instruction first instead)."""
    if style.template == "short" and request.task in _REC and short_instruction:
        return _short(request, candidates, labels, short_instruction, style)
    block = _candidate_block(request, candidates, labels, style)
    return f"{_context_block(request, style)}\n\n{block}\n\n{instruction}"


def _short(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str] | None,
    instruction: str,
    style: PromptStyle,
) -> str:
    compact = style.title_chars == 0 and bool(style.item_tokens)
    seen = ("" if compact else "; ").join(_history_shown(request, style))
    cands = [candidate_line(c, request.task, request.show_signals, style) for c in candidates]
    labelled = labels or [None] * len(candidates)
    if compact and labels is not None and list(labels) == cands:  # items are their labels
        lines = "".join(cands)
    elif compact:  # " A<|item:1|> B<|item:8|>": the label token, then the soft token
        lines = "".join(f" {lab or '-'}{text}" for lab, text in zip(labelled, cands, strict=True))
    else:
        lines = "\n" + "\n".join(_listed(labelled, cands))
    query = f"\nLooking for: {request.query}" if request.query else ""
    return f"{instruction}\nSeen: {seen or 'nothing yet'}{query}\nCandidates:{lines}"


def reason_prompt(
    request: RankRequest, candidates: Sequence[Candidate], style: PromptStyle = PAPER_STYLE
) -> str:
    """The paper's per-step prompt: remaining candidates by text, answer the title in tags."""
    w = task_wording(request.task)
    return _assemble(
        request,
        candidates,
        None,
        f"{_select_sentence(request)} Think step by step inside <think> </think>, then give "
        f"the {w.item} exactly as it appears in the list inside <answer> </answer>.",
        style,
    )


def label_prompt(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    style: PromptStyle = PAPER_STYLE,
) -> str:
    """`score` mode: remaining candidates with labels, answer one label."""
    w = task_wording(request.task)
    return _assemble(
        request, candidates, labels, f"{_select_sentence(request)} Answer with its label only.",
        style, f"Name the {w.item} {w.least}; answer its label.",
    )  # fmt: skip


def elimination_prompt(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    style: PromptStyle = PAPER_STYLE,
) -> str:
    """`incremental` mode: all candidates once; the answer lists labels in elimination order."""
    w = task_wording(request.task)
    return _assemble(
        request,
        candidates,
        labels,
        f"Eliminate the {w.items} one at a time: first the one that is {w.least}, then the "
        f"{w.least} among those left, and so on until one {w.item} remains. Answer with the "
        "labels only, in elimination order, separated by spaces.",
        style,
        f"Eliminate the {w.items} {w.least} one at a time; answer labels.",
    )


def ranking_prompt(
    request: RankRequest,
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    style: PromptStyle = PAPER_STYLE,
) -> str:
    """`direct` mode (DRanker): the whole order, best first, in one answer."""
    w = task_wording(request.task)
    return _assemble(
        request,
        candidates,
        labels,
        f"Rank all {len(candidates)} {w.items}, starting with the {w.most}. Answer with the "
        "labels only, best first, separated by spaces.",
        style,
        f"Rank the {w.items}, {w.most} first; answer labels.",
    )


# What the assistant's answer starts with in the label modes; the label tokens follow it.
SCORE_ANSWER_PREFIX = "Answer:"
ELIMINATION_ANSWER_PREFIX = "Elimination order:"
RANKING_ANSWER_PREFIX = "Ranking:"
