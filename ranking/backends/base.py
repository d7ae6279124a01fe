"""The one interface every language-model backend implements.

Rankers only ever need two things from a model:

* `generate`: free text for a batch of chat prompts (the `reason` mode);
* `next_token_logprobs`: for a batch of token contexts, the log-probabilities of the
  next token restricted to a set of allowed token ids, renormalised over that set
  (the `score`, `incremental` and `direct` modes build every constrained step on it).

Backends hide how they make these fast (KV-cache reuse for contexts that extend
an earlier one, prefix caching, batching); the rankers stay backend-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranking.prompts import style_of


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int


class LMBackend(ABC):
    """A causal LM with its tokenizer. `model_id` names the weights (path or version)."""

    model_id: str
    tokenizer: object  # a Hugging Face PreTrainedTokenizerBase
    # how prompts show requests to this model (ranking.prompts.PromptStyle); None: the
    # paper's wording. A hybrid model (ranking.hybrid) sets its own.
    prompt_style: object = None

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """The model's own chat template applied, ready for the assistant's answer (the bare
        prompt and a newline when the model's prompt style has no chat template, or when the
        model has none: a base model such as Gemma 3 270M's GGUF)."""
        # a tokenizer stand-in without the attribute (the fake backend's) has its own template
        if not style_of(self).chat or not getattr(self.tokenizer, "chat_template", True):
            return f"{system}\n{user}\n" if system else f"{user}\n"
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continue each prompt (already chat-formatted text); greedy when temperature is 0."""

    @abstractmethod
    def next_token_logprobs(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """For each context (token ids), log P(next token = a) for a in allowed[i],
        renormalised so that the probabilities over allowed[i] sum to 1."""

    # Optional: backends that compute several positions of one sequence in one pass (the
    # transformers backend) set this and override `continuation_logprobs`; rankers then
    # speculate several constrained steps per model call. Others keep the default below.
    efficient_continuation: bool = False

    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        allowed: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[np.ndarray]]:
        """For each i and each j in 0..len(continuations[i]): the renormalised log-probs,
        over allowed[i][j], of the token after contexts[i] + continuations[i][:j].

        Default: one `next_token_logprobs` call over all those prefixes."""
        flat_ctx: list[list[int]] = []
        flat_allowed: list[Sequence[int]] = []
        for ctx, cont, allow in zip(contexts, continuations, allowed, strict=True):
            for j in range(len(cont) + 1):
                flat_ctx.append([*ctx, *cont[:j]])
                flat_allowed.append(allow[j])
        flat = iter(self.next_token_logprobs(flat_ctx, flat_allowed))
        return [[next(flat) for _ in range(len(cont) + 1)] for cont in continuations]
