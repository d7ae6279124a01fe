"""The KV cache the transformers backends keep between calls, and how a new batch reuses it.

Layout of a cached batch: every row is [left padding | kept prefix | appended tokens, right
padded]; an explicit attention mask hides the padding and explicit position ids count only
real tokens, so padding in the middle of a row is harmless. A context that continues its own
row after dropping a few tokens (rejected speculative labels) keeps the cache and masks the
dropped slots (`truncation` + `mask_truncate`); other reuse gathers the kept prefixes into a
new, compact cache (`plan_reuse`, then the backend's gather).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Reusing a cached prefix costs a gather of its keys/values; below this many tokens it is
# cheaper to recompute.
MIN_REUSE_TOKENS = 4
# A row that continues its own previous row after dropping at most this many tokens (rejected
# speculative labels) keeps its cache and masks the dropped slots instead of copying the cache.
MAX_DEAD_TOKENS = 32


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
class CachedBatch:
    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [B, T] 1 for real tokens
    tokens: list[tuple[int, ...]]  # the real tokens of each row


def truncation(
    rows: list[tuple[int, ...]], contexts: list[tuple[int, ...]], need: list[int]
) -> list[int] | None:
    """Tokens to keep per row when each context continues its own row (same batch, same
    order) after dropping at most MAX_DEAD_TOKENS of it; else None."""
    if len(rows) != len(contexts):
        return None
    keeps = []
    for r, c, k in zip(rows, contexts, need, strict=True):
        keep = min(common_prefix(r, c), len(c) - k)
        if keep < 1 or len(r) - keep > MAX_DEAD_TOKENS:
            return None
        keeps.append(keep)
    return keeps


def mask_truncate(state: CachedBatch, keeps: list[int]) -> CachedBatch:
    """Drop the tail of each row by masking it out: no copy of the cache (the masked slots
    stay, unseen, until the next compaction by a gather)."""
    mask = state.mask.clone()
    tokens = []
    for i, keep in enumerate(keeps):
        if keep < len(state.tokens[i]):
            real = torch.nonzero(mask[i], as_tuple=False).squeeze(1)
            mask[i, real[keep:]] = 0
        tokens.append(state.tokens[i][:keep])
    return CachedBatch(state.cache, mask, tokens)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in chunks first: contexts are long and usually share most of their tokens
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_reuse(
    rows: list[tuple[int, ...]], contexts: list[tuple[int, ...]], need: list[int]
) -> list[tuple[int, int]]:
    """For each context, (source row, tokens to keep) maximising the shared prefix.

    The positions whose logits are asked for are always recomputed."""
    plan = []
    for c, k in zip(contexts, need, strict=True):
        best_src, best_keep = -1, 0
        for j, r in enumerate(rows):
            keep = min(common_prefix(r, c), len(c) - k)
            if keep > best_keep:
                best_src, best_keep = j, keep
        plan.append((best_src, best_keep) if best_keep >= MIN_REUSE_TOKENS else (-1, 0))
    return plan


def is_plain_dynamic(cache: object) -> bool:
    """Whether every layer is a plain (full-attention) dynamic layer: the only kind whose
    rows the reuse above may gather or mask."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    plain = (DynamicLayer, _growable_layer_class())
    return bool(layers) and all(
        type(layer) in plain and not isinstance(layer, DynamicSlidingWindowLayer)
        for layer in layers  # type: ignore[union-attr]
    )
