"""Hugging Face transformers backend: CPU or CUDA, batched, with KV-cache reuse.

`next_token_logprobs` keeps the KV cache of the rows of its previous call. A new context
that extends, or shares a long prefix with, one of those rows reuses its cached keys and
values and only the new tokens go through the model. That is what makes `incremental` mode
cost about one prefill (each step appends one label token to the previous context), lets
`score` mode compute the shared prompt prefix once, and lets consecutive requests share the
chat template's system prompt.

Layout of the cached batch: every row is [left padding | kept prefix | appended tokens,
right padded]; an explicit attention mask hides the padding and explicit position ids count
only real tokens, so padding in the middle of a row is harmless. A context that continues its
own row after dropping a few tokens (rejected speculative labels) keeps the cache and masks
the dropped slots; other reuse gathers the kept prefixes into a new, compact cache. Only the
positions asked for go through the LM head (a vocabulary-sized logit row per position, not
per token).

`continuation_logprobs` scores several appended tokens in one forward pass: a decoding step
on CPU is bound by reading the weights, so scoring 7 positions costs about as much as 1;
the rankers use it to speculate several elimination steps per call.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ranking.backends.base import Generation, LMBackend

log = logging.getLogger(__name__)

# Reusing a cached prefix costs a gather of its keys/values; below this many tokens it is
# cheaper to recompute.
MIN_REUSE_TOKENS = 4
# A row that continues its own previous row after dropping at most this many tokens (rejected
# speculative labels) keeps its cache and masks the dropped slots instead of copying the cache.
MAX_DEAD_TOKENS = 32
# On CPU, a batch of rows this long or longer, with nothing cached, is prefilled row by row.
MIN_SEPARATE_PREFILL = 64


@functools.cache
def _growable_layer_class() -> type:
    """A DynamicLayer that appends into a buffer with spare capacity instead of
    `torch.cat`-ing the whole cache on every step. A decoding step on CPU is bound by memory
    traffic, and re-copying every layer's keys and values per token cost ~7% of a step."""
    from transformers.cache_utils import DynamicLayer

    class GrowableLayer(DynamicLayer):
        _kbuf: torch.Tensor | None = None
        _vbuf: torch.Tensor | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.keys.shape[-2] if self.keys.numel() else 0
            add = key_states.shape[-2]
            if not self._owns_current(key_states, n + add):
                self._regrow(key_states, value_states, n, n + add)
            self._kbuf[..., n : n + add, :] = key_states
            self._vbuf[..., n : n + add, :] = value_states
            self.keys = self._kbuf[..., : n + add, :]
            self.values = self._vbuf[..., : n + add, :]
            return self.keys, self.values

        def _owns_current(self, new: torch.Tensor, total: int) -> bool:
            # keys may have been replaced by a base-class method (crop, reorder, ...)
            kb = self._kbuf
            return (
                kb is not None
                and kb.shape[:2] == new.shape[:2]
                and total <= kb.shape[-2]
                and self.keys.data_ptr() == kb.data_ptr()
            )

        def _regrow(self, key_states, value_states, n: int, total: int) -> None:
            cap = total + max(64, total // 4)
            shape = (*key_states.shape[:2], cap, key_states.shape[-1])
            kb, vb = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:
                kb[..., :n, :] = self.keys
                vb[..., :n, :] = self.values
            self._kbuf, self._vbuf = kb, vb

    return GrowableLayer


def new_kv_cache(config: object) -> object:
    """An empty DynamicCache whose full-attention layers grow in place."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    layer_cls = _growable_layer_class()
    cache.layers = [
        layer_cls() if type(layer) is DynamicLayer else layer
        for layer in cache.layers  # type: ignore[attr-defined]
    ]
    return cache


@dataclass
class _CachedBatch:
    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [B, T] 1 for real tokens
    tokens: list[tuple[int, ...]]  # the real tokens of each row


class TransformersBackend(LMBackend):
    """A causal LM from transformers. Build it with :func:`ranking.loading.load_backend`."""

    def __init__(self, model, tokenizer, model_id: str, device: str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = torch.device(device)
        self._state: _CachedBatch | None = None
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
        # sliding-window layers drop old keys, so the row layout above would not hold
        cfg = model.config
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types:
            sliding = "sliding_attention" in layer_types
        else:
            sliding = bool(getattr(cfg, "sliding_window", None)) and bool(
                getattr(cfg, "use_sliding_window", True)
            )
        self.reuse_cache = not sliding
        # one-token steps through ranking.backends.llama_step where the model allows it,
        # reading 4-bit projections (a Q4_1 GGUF file) as 4-bit blocks unless q4_decode is off
        self.fast_decode = True
        self.q4_decode = True
        self._llama_steps: dict[bool, object] = {}  # by q4_decode; None: the model has none
        self.hybrid = None  # ranking.hybrid.Hybrid when serving a hybrid model

    def attach_hybrid(self, hybrid) -> None:  # type: ignore[no-untyped-def]
        """Serve a hybrid model: its prompt style, and no fast step for an item token."""
        self.hybrid = hybrid
        self.prompt_style = hybrid.style
        self.clear_cache()

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
        if state is not None and _is_plain_dynamic(state.cache):
            keeps = _truncation(state.tokens, contexts, need)
            if keeps is not None:
                return self._extend(_mask_truncate(state, keeps), contexts, need, vocab)
            plan = _plan_reuse(state.tokens, contexts, need)
            base = self._gather(state, plan)
            if base is not None:
                return self._extend(base, contexts, need, vocab)
        empty = torch.zeros(len(contexts), 0, dtype=torch.long, device=self.device)
        return self._extend(
            _CachedBatch(None, empty, [() for _ in contexts]), contexts, need, vocab
        )

    def _gather(self, state: _CachedBatch, plan: list[tuple[int, int]]) -> _CachedBatch | None:
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
        cache = new_kv_cache(self.model.config)
        for li, layer in enumerate(state.cache.layers):  # type: ignore[attr-defined]
            k, v = layer.keys[src_rows], layer.values[src_rows]  # [n, H, T, D]
            idx = slot_idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            cache.update(k.gather(2, idx), v.gather(2, idx), li)
        return _CachedBatch(cache, new_mask, tokens)

    def _extend(
        self,
        base: _CachedBatch,
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
        self._state = _CachedBatch(cache, mask, list(contexts))
        return list(torch.split(logits, need))

    def _forward_batch(
        self, base: _CachedBatch, suffixes: list[tuple[int, ...]], need: list[int]
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
        cache = base.cache if base.cache is not None else new_kv_cache(self.model.config)
        ids = ids.to(self.device)
        # an item token is embedded by the hybrid's hooks, which the fast step bypasses
        step = self._fast_step() if width == 1 and not self._has_soft(ids) else None
        if step is not None:
            hidden = step(ids, pos, mask, cache)
        else:
            hidden = self.model.get_decoder()(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        # only the positions asked for go through the (vocabulary-sized) LM head
        rows = torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(need)])
        cols = torch.cat(
            [
                torch.arange(ln - k, ln, dtype=torch.long)
                for ln, k in zip(lengths, need, strict=True)
            ]
        )
        return cache, mask, hidden[rows.to(self.device), cols.to(self.device)]

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
        dec = self.model.get_decoder()
        caches, picked = [], []
        for s, k in zip(suffixes, need, strict=True):
            cache = new_kv_cache(self.model.config)
            ids = torch.tensor([s], dtype=torch.long, device=self.device)
            hidden = dec(
                input_ids=ids,
                position_ids=torch.arange(len(s), device=self.device)[None, :],
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            caches.append(cache)
            picked.append(hidden[0, len(s) - k :])
        mask = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for i, s in enumerate(suffixes):
            mask[i, width - len(s) :] = 1
        merged = new_kv_cache(self.model.config)
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

    def _fast_step(self):
        """The fast one-token step (ranking.backends.llama_step) when the model has one."""
        if not self.fast_decode:
            return None
        key = self.q4_decode
        if key in self._llama_steps:
            step = self._llama_steps[key]
            if step is None or step.is_current():
                return step
        from ranking.backends.llama_step import LlamaStep

        t0 = time.perf_counter()
        step = self._llama_steps[key] = LlamaStep.build(self.model, allow_q4=key)
        if step is not None:
            log.info(
                "fast one-token step built in %.1fs: %s weights, %.0f MB",
                time.perf_counter() - t0,
                step.weights,
                step.nbytes / 1e6,
            )
        return step

    @property
    def _llama_step(self):
        """The step built for the current `q4_decode` setting (None: none yet, or none fits)."""
        return self._llama_steps.get(self.q4_decode)

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


def _truncation(
    rows: list[tuple[int, ...]], contexts: list[tuple[int, ...]], need: list[int]
) -> list[int] | None:
    """Tokens to keep per row when each context continues its own row (same batch, same
    order) after dropping at most MAX_DEAD_TOKENS of it; else None."""
    if len(rows) != len(contexts):
        return None
    keeps = []
    for r, c, k in zip(rows, contexts, need, strict=True):
        keep = min(_common_prefix(r, c), len(c) - k)
        if keep < 1 or len(r) - keep > MAX_DEAD_TOKENS:
            return None
        keeps.append(keep)
    return keeps


def _mask_truncate(state: _CachedBatch, keeps: list[int]) -> _CachedBatch:
    """Drop the tail of each row by masking it out: no copy of the cache (the masked slots
    stay, unseen, until the next compaction by `_gather`)."""
    mask = state.mask.clone()
    tokens = []
    for i, keep in enumerate(keeps):
        if keep < len(state.tokens[i]):
            real = torch.nonzero(mask[i], as_tuple=False).squeeze(1)
            mask[i, real[keep:]] = 0
        tokens.append(state.tokens[i][:keep])
    return _CachedBatch(state.cache, mask, tokens)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in chunks first: contexts are long and usually share most of their tokens
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _plan_reuse(
    rows: list[tuple[int, ...]], contexts: list[tuple[int, ...]], need: list[int]
) -> list[tuple[int, int]]:
    """For each context, (source row, tokens to keep) maximising the shared prefix.

    The positions whose logits are asked for are always recomputed."""
    plan = []
    for c, k in zip(contexts, need, strict=True):
        best_src, best_keep = -1, 0
        for j, r in enumerate(rows):
            keep = min(_common_prefix(r, c), len(c) - k)
            if keep > best_keep:
                best_src, best_keep = j, keep
        plan.append((best_src, best_keep) if best_keep >= MIN_REUSE_TOKENS else (-1, 0))
    return plan


def _is_plain_dynamic(cache: object) -> bool:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    plain = (DynamicLayer, _growable_layer_class())
    return bool(layers) and all(
        type(layer) in plain and not isinstance(layer, DynamicSlidingWindowLayer)
        for layer in layers  # type: ignore[union-attr]
    )


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [int(x)]
