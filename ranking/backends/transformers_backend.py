"""Hugging Face transformers backend: CPU or CUDA, batched, with KV-cache reuse.

`next_token_logprobs` keeps the KV cache of the rows of its previous call. A new context
that extends, or shares a long prefix with, one of those rows reuses its cached keys and
values and only the new tokens go through the model. That is what makes `incremental` mode
cost about one prefill (each step appends one label token to the previous context), lets
`score` mode compute the shared prompt prefix once, and lets consecutive requests share the
chat template's system prompt. The cache layout and the reuse rules are in
:mod:`ranking.backends.kv_cache`. Only the positions asked for go through the LM head (a
vocabulary-sized logit row per position, not per token).

`continuation_logprobs` scores several appended tokens in one forward pass: a decoding step
on CPU is bound by reading the weights, so scoring 7 positions costs about as much as 1;
the rankers use it to speculate several elimination steps per call.

Every token goes through the model's own decoder here. :mod:`ranking.backends.fast_cpu`
is the same backend with its one-token steps computed by a faster path on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ranking.backends.base import Generation, LMBackend
from ranking.backends.kv_cache import (
    CachedBatch,
    is_plain_dynamic,
    mask_truncate,
    new_kv_cache,
    plan_reuse,
    truncation,
)

# On CPU, a batch of rows this long or longer, with nothing cached, is prefilled row by row.
MIN_SEPARATE_PREFILL = 64


class TransformersBackend(LMBackend):
    """A causal LM from transformers. Build it with :func:`ranking.loading.load_backend`."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, model_id: str, device: str = "cpu"
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = torch.device(device)
        self._state: CachedBatch | None = None
        self._stops: dict[tuple[str, ...], object] = {}
        self.reuse_cache = True
        # counters, for benchmarks and tests: tokens that went through the model
        self.tokens_computed = 0
        self.forward_calls = 0
        self.last_forward_s = 0.0
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._pad_id = int(tokenizer.pad_token_id)
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        # sliding-window layers drop old keys, so the cached row layout (kv_cache) would not hold
        cfg = model.config
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types:
            sliding = "sliding_attention" in layer_types
        else:
            sliding = bool(getattr(cfg, "sliding_window", None)) and bool(
                getattr(cfg, "use_sliding_window", True)
            )
        self.reuse_cache = not sliding
        self.hybrid = None  # ranking.hybrid.Hybrid when serving a hybrid model
        self._split = None  # ranking.hybrid_split.HybridSplit: its lower layers memoised
        self._split_built = None  # kept while the split is off, memo and all

    def attach_hybrid(self, hybrid, split=None) -> None:  # type: ignore[no-untyped-def]
        """Serve a hybrid model: its prompt style, and its item tokens' label logits; `split`:
        an existing memo of its lower layers (a trainer's, whose model may carry only the
        memo: ranking.rl.bundle) instead of one built from the model."""
        self.hybrid = hybrid
        if split is not None:
            self._split_built = split
        self.prompt_style = hybrid.style
        self.split_hybrid(True)

    def split_hybrid(self, on: bool) -> None:
        """Serve the attached hybrid with its lower layers memoised per prompt layout
        (ranking.hybrid_split; exact) or, off, through the whole model and its hooks."""
        from ranking.hybrid_split import HybridSplit

        built = self._split_built
        if on and self.hybrid is not None and (built is None or built.hybrid is not self.hybrid):
            built = self._split_built = HybridSplit.build(self.model, self.hybrid)
        self._split = built if on and self.hybrid is not None else None  # the memo is kept
        self.clear_cache()  # the two paths keep KV caches of different depths

    def _cache_config(self) -> Any:
        return self._split.upper.config if self._split is not None else self.model.config

    def _has_soft(self, ids: Sequence[int] | torch.Tensor) -> bool:
        """Whether any id is a hybrid model's item token (ids from its base vocabulary up)."""
        if self.hybrid is None:
            return False
        top = int(ids.max()) if isinstance(ids, torch.Tensor) else max(ids)
        return top >= self.hybrid.base_vocab

    # ------------------------------------------------------------------ public API

    def clear_cache(self) -> None:
        """Forget the cached KV state (benchmarks use it to time a cold prefill)."""
        self._state = None

    efficient_continuation = True

    @torch.inference_mode()
    def next_token_logprobs(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        if len(contexts) != len(allowed):
            raise ValueError("contexts and allowed must have the same length")
        if not contexts:
            return []
        vocab, where = _label_vocab(allowed)
        rows = self._logits(
            [tuple(int(t) for t in c) for c in contexts], [1] * len(contexts), vocab
        )
        return [
            _restrict(r[0], [where[t] for t in ids]) for r, ids in zip(rows, allowed, strict=True)
        ]

    @torch.inference_mode()
    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        allowed: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[np.ndarray]]:
        """All positions of each continuation in ONE forward pass (see LMBackend)."""
        if not contexts:
            return []
        full = [
            tuple(int(t) for t in (*c, *k)) for c, k in zip(contexts, continuations, strict=True)
        ]
        vocab, where = _label_vocab([ids for allow in allowed for ids in allow])
        rows = self._logits(full, [len(k) + 1 for k in continuations], vocab)
        return [
            [_restrict(r[j], [where[t] for t in ids]) for j, ids in enumerate(allow)]
            for r, allow in zip(rows, allowed, strict=True)
        ]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = ("</answer>",),
    ) -> list[Generation]:
        if not prompts:
            return []
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        enc = {k: v.to(self.device) for k, v in enc.items()}
        kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": self._pad_id}
        if temperature > 0:
            if seed is not None:
                torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if stop:
            kwargs["stopping_criteria"] = self._stop_criteria(tuple(stop))
        out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        gens = []
        eos = set(_as_list(self.model.generation_config.eos_token_id)) | {self._pad_id}
        for row in new.tolist():
            n = len(row)
            for i, t in enumerate(row):
                if t in eos:
                    n = i + 1
                    break
            gens.append(Generation(tok.decode(row[:n], skip_special_tokens=True), n))
        self.tokens_computed += int(enc["input_ids"].numel()) + sum(g.n_tokens for g in gens)
        return gens

    def _stop_criteria(self, stop: tuple[str, ...]):
        # building a StopStringCriteria scans the whole vocabulary: do it once per stop set
        from transformers import StoppingCriteriaList, StopStringCriteria

        if stop not in self._stops:
            self._stops[stop] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, stop)])
        return self._stops[stop]

    # ------------------------------------------------------------------ KV-cache reuse

    def _logits(
        self, contexts: list[tuple[int, ...]], need: list[int], vocab: list[int] | None = None
    ) -> list[torch.Tensor]:
        """For each context, the next-token logits after each of its last need[i] tokens
        ([need[i], V], or [need[i], len(vocab)] over the token ids `vocab` only), reusing the
        cached rows of the previous call where possible."""
        if any(n > len(c) or n < 1 for c, n in zip(contexts, need, strict=True)):
            raise ValueError("every context needs at least one token per requested position")
        state = self._state if self.reuse_cache else None
        if state is not None and is_plain_dynamic(state.cache):
            keeps = truncation(state.tokens, contexts, need)
            if keeps is not None:
                return self._extend(mask_truncate(state, keeps), contexts, need, vocab)
            plan = plan_reuse(state.tokens, contexts, need)
            base = self._gather(state, plan)
            if base is not None:
                return self._extend(base, contexts, need, vocab)
        empty = torch.zeros(len(contexts), 0, dtype=torch.long, device=self.device)
        return self._extend(CachedBatch(None, empty, [() for _ in contexts]), contexts, need, vocab)

    def _gather(self, state: CachedBatch, plan: list[tuple[int, int]]) -> CachedBatch | None:
        """A new cached batch whose row i holds the first keep_i tokens of old row src_i."""
        kmax = max(keep for _, keep in plan)
        if kmax == 0:
            return None
        dev = state.mask.device
        n = len(plan)
        # index of each kept slot in the old layout; rows are left padded to kmax
        slot_idx = torch.zeros(n, kmax, dtype=torch.long, device=dev)
        new_mask = torch.zeros(n, kmax, dtype=torch.long, device=dev)
        src_rows = torch.zeros(n, dtype=torch.long, device=dev)
        tokens: list[tuple[int, ...]] = []
        for i, (src, keep) in enumerate(plan):
            src_rows[i] = max(src, 0)
            if keep:
                real = torch.nonzero(state.mask[src], as_tuple=False).squeeze(1)[:keep]
                slot_idx[i, kmax - keep :] = real
                new_mask[i, kmax - keep :] = 1
            tokens.append(state.tokens[src][:keep] if keep else ())
        cache = new_kv_cache(self._cache_config())
        for li, layer in enumerate(state.cache.layers):  # type: ignore[attr-defined]
            k, v = layer.keys[src_rows], layer.values[src_rows]  # [n, H, T, D]
            idx = slot_idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            cache.update(k.gather(2, idx), v.gather(2, idx), li)
        return CachedBatch(cache, new_mask, tokens)

    def _extend(
        self,
        base: CachedBatch,
        contexts: list[tuple[int, ...]],
        need: list[int],
        vocab: list[int] | None = None,
    ) -> list[torch.Tensor]:
        """Run each context's tokens beyond base.tokens through the model; cache the result."""
        suffixes = [c[len(t) :] for c, t in zip(contexts, base.tokens, strict=True)]
        self._state = None  # a failed forward must not leave a half-extended cache behind
        t0 = time.perf_counter()
        if base.cache is None and self._prefill_rows_apart(suffixes):
            cache, mask, picked = self._prefill_rows(suffixes, need)
        else:
            cache, mask, picked = self._forward_batch(base, suffixes, need)
        logits = self._head(picked, vocab).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        self.last_forward_s = time.perf_counter() - t0
        self.forward_calls += 1
        self.tokens_computed += sum(len(s) for s in suffixes)
        self._state = CachedBatch(cache, mask, list(contexts))
        return list(torch.split(logits, need))

    def _forward_batch(
        self, base: CachedBatch, suffixes: list[tuple[int, ...]], need: list[int]
    ) -> tuple[object, torch.Tensor, torch.Tensor]:
        """All rows in one forward pass: (cache, mask, hidden states of the needed
        positions, row after row)."""
        n = len(suffixes)
        lengths = [len(s) for s in suffixes]
        width = max(lengths)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        new_mask = torch.zeros(n, width, dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            new_mask[i, : len(s)] = 1
        past_mask = base.mask.to(self.device)
        mask = torch.cat([past_mask, new_mask.to(self.device)], dim=1)
        n_past = past_mask.sum(dim=1, keepdim=True)
        pos = n_past + torch.arange(width, device=self.device)[None, :]
        cache = base.cache if base.cache is not None else new_kv_cache(self._cache_config())
        contexts = [(*t, *s) for t, s in zip(base.tokens, suffixes, strict=True)]
        hidden = self._decode(ids.to(self.device), pos, mask, cache, (contexts, lengths))
        # only the positions asked for go through the (vocabulary-sized) LM head
        rows = torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(need)])
        cols = torch.cat(
            [
                torch.arange(ln - k, ln, dtype=torch.long)
                for ln, k in zip(lengths, need, strict=True)
            ]
        )
        return cache, mask, hidden[rows.to(self.device), cols.to(self.device)]

    def _decode(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None,
        cache: object,
        rows: tuple[list[tuple[int, ...]], list[int]],
    ) -> torch.Tensor:
        """Last hidden states [B, T, C] of `ids` after the cached keys, appended to `cache`
        (the model's own decoder; the fast CPU backend replaces its one-token steps).
        `rows` = (each row's whole context, how many of its tokens are in `ids`): a split
        hybrid looks its lower layers up by context."""
        if self._split is not None:
            return self._split.upper.get_decoder()(
                inputs_embeds=self._split.inputs(*rows, ids),
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        return self.model.get_decoder()(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state

    def _prefill_rows_apart(self, suffixes: list[tuple[int, ...]]) -> bool:
        """On CPU a long prompt is compute-bound on its own: batching several only adds
        padding and the masked (slower) attention path, so each row is prefilled alone."""
        return (
            self.device.type == "cpu"
            and len(suffixes) > 1
            and min(len(s) for s in suffixes) >= MIN_SEPARATE_PREFILL
        )

    def _prefill_rows(
        self, suffixes: list[tuple[int, ...]], need: list[int]
    ) -> tuple[object, torch.Tensor, torch.Tensor]:
        """Prefill each row alone, then lay the rows' caches side by side, left padded
        (the same layout the batched path produces), for the batched steps that follow."""
        n, width = len(suffixes), max(len(s) for s in suffixes)
        caches, picked = [], []
        for s, k in zip(suffixes, need, strict=True):
            cache = new_kv_cache(self._cache_config())
            ids = torch.tensor([s], dtype=torch.long, device=self.device)
            pos = torch.arange(len(s), device=self.device)[None, :]
            # no padding: no mask, as before the split (the causal kernel, not a masked one)
            hidden = self._decode(ids, pos, None, cache, ([tuple(s)], [len(s)]))
            caches.append(cache)
            picked.append(hidden[0, len(s) - k :])
        mask = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for i, s in enumerate(suffixes):
            mask[i, width - len(s) :] = 1
        merged = new_kv_cache(self._cache_config())
        for li in range(len(caches[0].layers)):  # type: ignore[attr-defined]
            first = caches[0].layers[li].keys  # type: ignore[attr-defined]
            shape = (n, first.shape[1], width, first.shape[3])
            keys, values = first.new_zeros(shape), first.new_zeros(shape)
            for i, c in enumerate(caches):
                layer = c.layers[li]  # type: ignore[attr-defined]
                keys[i, :, width - len(suffixes[i]) :] = layer.keys[0]
                values[i, :, width - len(suffixes[i]) :] = layer.values[0]
            merged.update(keys, values, li)
        return merged, mask, torch.cat(picked)

    def _head(self, hidden: torch.Tensor, vocab: list[int] | None) -> torch.Tensor:
        if vocab is None:
            return self.model.get_output_embeddings()(hidden)
        if self._has_soft(vocab):
            index = torch.as_tensor(vocab, dtype=torch.long, device=hidden.device)
            return self.hybrid.label_logits(self.model.get_output_embeddings(), hidden, index)
        return label_head(self.model, hidden, vocab)


def label_head(model, hidden: torch.Tensor, vocab: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The LM head's logits of the token ids `vocab` only ([..., len(vocab)]). A constrained
    step needs ~20 label logits, not 49k: skipping the rest of the head (a fifth of
    SmolLM2's weights) makes every decoding step read that much less. A head that is not a
    plain Linear is applied whole and its columns picked."""
    head = model.get_output_embeddings()
    index = torch.as_tensor(vocab, dtype=torch.long, device=hidden.device)
    if not isinstance(head, torch.nn.Linear):
        return head(hidden)[..., index]
    bias = None if head.bias is None else head.bias[index]
    return torch.nn.functional.linear(hidden, head.weight[index], bias)


def _label_vocab(allowed: Sequence[Sequence[int]]) -> tuple[list[int], dict[int, int]]:
    """The sorted union of the allowed token ids, and each id's column in it."""
    vocab = sorted({int(t) for ids in allowed for t in ids})
    return vocab, {t: j for j, t in enumerate(vocab)}


def _restrict(row: torch.Tensor, ids: Sequence[int]) -> np.ndarray:
    sel = row[torch.as_tensor(list(ids), dtype=torch.long, device=row.device)]
    return torch.log_softmax(sel.float(), dim=-1).cpu().numpy().astype(np.float64)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [int(x)]
