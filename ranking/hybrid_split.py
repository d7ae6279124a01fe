"""Serving a hybrid model with its lower layers computed once per prompt layout.

Why it is exact: below `inject_layer` a hybrid model never sees which item is where — every
item token is embedded as the same placeholder (ranking.hybrid), and the item's vector only
enters at `inject_layer`. So the stream entering that layer is a function of the
*placeholder-ized* token sequence alone, which is the same for every request with the same
layout (the instruction, 20 history items, 20 candidates) and, because every elimination
step appends an item token, for every step of every such request. A serving request then
needs only the layers from `inject_layer` up: 8 of SmolLM2's 30 (inject_layer 22).

:class:`HybridSplit` keeps

* `lower`: a view of layers 0..inject_layer-1 (the model's own modules and weights, the
  final norm left out) and a memo from a placeholder-ized prompt to the stream entering
  `inject_layer` at each of its positions, computed once for the prompt followed by
  `extra` placeholders (the elimination steps to come): a step's lower half is a lookup;
* `upper`: a causal LM view of layers inject_layer..N-1 (the same modules, their attention
  layer indices renumbered from 0 for their own KV cache), the final norm and the head. The
  backends run it on `inputs_embeds` = the memo's stream plus the items' soft tokens.

The memo assumes the lower layers' weights frozen: serving, and the hybrid trainer, whose
LoRA adapts only the layers from `inject_layer` up. It holds
at most `max_entries` prompts (each [prompt + extra, hidden] float32, ~0.25 MB for
SmolLM2's 75-token prompts), least recently used first out.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

EXTRA_POSITIONS = 32  # placeholders computed after each prompt: the elimination steps


class HybridSplit:
    def __init__(self, model: nn.Module, hybrid: Any, max_entries: int = 64) -> None:
        self.hybrid = hybrid
        self.inject_layer = hybrid.config.inject_layer
        self.lower = _view(model, 0, self.inject_layer, keep_norm=False)
        self.upper = _view(model, self.inject_layer, None, keep_norm=True)
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.lower_tokens = 0  # tokens that went through the lower layers (tests, benchmarks)
        self.frozen = False  # a preloaded memo: a layout it lacks is an error, not computed

    @classmethod
    def build(cls, model: nn.Module, hybrid: Any) -> HybridSplit | None:
        """The split for a Llama-architecture causal LM; None for anything else (served
        unsplit, through the hooks)."""
        if getattr(model.config, "model_type", None) != "llama":
            return None  # other families have more parts (Gemma: a second rotary, softcaps)
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        needed = ("embed_tokens", "norm", "rotary_emb")
        if layers is None or not all(hasattr(inner, n) for n in needed):
            return None
        if not 0 < hybrid.config.inject_layer < len(layers):
            return None
        return cls(model, hybrid)

    # -- the stream entering the upper layers ---------------------------------------

    def inputs(
        self, contexts: Sequence[Sequence[int]], lengths: Sequence[int], ids: torch.Tensor
    ) -> torch.Tensor:
        """[B, T, C]: row i's stream entering `inject_layer` at the positions of its last
        `lengths[i]` tokens (the row of `ids`, right padded), soft tokens added; zeros at
        padding. `contexts[i]` is row i's whole token sequence, ending with those tokens.
        Gradients reach the projector (training), never the memoised lower layers."""
        out = None
        with torch.no_grad():
            for i, (context, n) in enumerate(zip(contexts, lengths, strict=True)):
                stream = self._stream(context)[len(context) - n :]
                if out is None:
                    out = stream.new_zeros(ids.shape[0], ids.shape[1], stream.shape[-1])
                out[i, :n] = stream
        assert out is not None
        return self._inject(out, ids)

    def preload(self, entries: dict[tuple[int, ...], torch.Tensor]) -> None:
        """Take memo entries computed elsewhere (ranking.rl.bundle: on the machine that has
        the lower layers' weights) and compute no layout from now on."""
        self._memo.update(entries)
        self.max_entries = max(self.max_entries, len(self._memo))
        self.frozen = True

    def _inject(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        found = self.hybrid.soft_positions(ids)
        return x if found is None else self.hybrid.add_soft_tokens(x, *found)

    def _stream(self, context: Sequence[int]) -> torch.Tensor:
        """The lower layers' output at every position of `context` ([len, C])."""
        flat = self._placeholders(context)
        prompt = _strip_trailing(flat, self.hybrid.placeholder_id)
        need = len(flat) - len(prompt)
        hidden = self._memo.get(prompt)
        if hidden is None or hidden.shape[0] < len(flat):
            if self.frozen:
                raise KeyError(
                    f"a prompt layout of {len(prompt)} tokens is not in the preloaded memo "
                    "of the lower layers (was the bundle written from these episodes?)"
                )
            extra = max(EXTRA_POSITIONS, need + EXTRA_POSITIONS // 2)
            hidden = self._compute(prompt + (self.hybrid.placeholder_id,) * extra)
            self._memo[prompt] = hidden
            while len(self._memo) > self.max_entries:
                self._memo.popitem(last=False)
        self._memo.move_to_end(prompt)
        return hidden[: len(flat)]

    def _placeholders(self, context: Sequence[int]) -> tuple[int, ...]:
        floor, ph = self.hybrid.base_vocab, self.hybrid.placeholder_id
        return tuple(ph if int(t) >= floor else int(t) for t in context)

    def _compute(self, tokens: tuple[int, ...]) -> torch.Tensor:
        device = next(self.lower.parameters()).device
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        self.lower_tokens += len(tokens)
        # placeholders only: the embedding hook records no pending soft token
        return self.lower.model(input_ids=ids, use_cache=False).last_hidden_state[0]


def _strip_trailing(tokens: tuple[int, ...], token: int) -> tuple[int, ...]:
    end = len(tokens)
    while end > 1 and tokens[end - 1] == token:
        end -= 1
    return tokens[:end]


def _view(model: nn.Module, start: int, stop: int | None, keep_norm: bool) -> nn.Module:
    """A causal LM over layers[start:stop] of `model`, sharing every weight: built on the
    meta device (nothing allocated), then given the model's own modules. The layers are
    shallow copies whose attention modules carry indices from 0 (their own KV cache) and
    that drop the model's hooks (the split applies the soft tokens itself)."""
    inner = model.model
    layers = list(inner.layers)[start:stop]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[start:stop]
    with torch.device("meta"):
        view = type(model)(config)
    view.model.embed_tokens = inner.embed_tokens
    view.model.rotary_emb = inner.rotary_emb
    view.model.norm = inner.norm if keep_norm else nn.Identity()
    view.model.layers = nn.ModuleList([_renumbered(layer, i) for i, layer in enumerate(layers)])
    view.lm_head = model.lm_head
    view.eval()
    return view


def _renumbered(layer: nn.Module, index: int) -> nn.Module:
    out = copy.copy(layer)
    out._modules = dict(layer._modules)
    out._forward_pre_hooks = OrderedDict()
    out._forward_pre_hooks_with_kwargs = OrderedDict()
    attn = copy.copy(layer.self_attn)
    attn.layer_idx = index
    out._modules["self_attn"] = attn
    if hasattr(out, "layer_idx"):
        out.layer_idx = index
    return out
