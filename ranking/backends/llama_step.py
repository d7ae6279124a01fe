"""A fast one-token decoding step for Llama-architecture models on CPU.

Why it exists: `incremental` mode is one prefill followed by one-token steps, and on CPU a
step is bound by reading the decoder's weights. The transformers forward spends most of a
step in matrix-vector products on weights stored [out, in] (MKL's slowest layout for a
single row) and the rest in ~2,000 small tensor operations (mask building, rotary, norms,
cache bookkeeping). This step computes exactly the same function with

* the projections stored [in, out] and fused (q|k|v, gate|up), so a step is 4 row-times-
  matrix products per layer instead of 7 matrix-times-row ones, in one buffer backed by
  transparent huge pages where Linux offers them;
* the RMSNorm weights, sqrt(hidden size) and the attention scaling folded into those
  matrices, so a norm is two kernels (vector_norm, hypot); one rotary pass over q and k
  together; a plain softmax attention for the single query (no 4-D mask is built).

The result equals the transformers forward up to float rounding (tested on a random tiny
Llama to 1e-5, with padded and masked batches, and on the default model);
benchmarks/bench_ranking.py times it against the transformers forward in the same run (its
`incremental, transformers forward` row; `--skip plain` leaves that row out).

The weights are copied once (the fused layout needs its own storage: +~0.43 GB for
SmolLM2-135M). The copies are tied to the exact weight tensors and their in-place version
counters: a model whose weights were replaced or edited (training, LoRA wrapping) is
detected by :meth:`LlamaStep.is_current` and the caller builds a new step or falls back.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

# Model families whose decoder layers have exactly the structure computed below.
SUPPORTED_MODEL_TYPES = ("llama",)


@dataclass(frozen=True)
class _Layer:
    qkv: torch.Tensor  # [C, (H + 2 KV) * D]
    o: torch.Tensor  # [H * D, C]
    gate_up: torch.Tensor  # [C, 2 * I]
    down: torch.Tensor  # [I, C]


class LlamaStep:
    """`step(ids, positions, mask, cache)` -> last hidden states [B, 1, C] (after the final
    norm), appending each row's key/value to `cache` like the transformers forward does."""

    def __init__(self, model: torch.nn.Module) -> None:
        dec = model.get_decoder()
        cfg = model.config
        self._decoder = dec
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.hidden = cfg.hidden_size
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.heads
        self.eps = float(dec.norm.variance_epsilon)
        self._eps_term = torch.tensor((self.hidden * self.eps) ** 0.5)
        self._links = _links(dec)
        self._seen = [_state(child) for _, _, child in self._links]
        with torch.no_grad():
            layers = [_fuse(layer) for layer in dec.layers]
            self._layers = _into_arena(layers)

    @classmethod
    def build(cls, model: torch.nn.Module) -> LlamaStep | None:
        """A step for `model`, or None when it is not a plain float32 Llama on CPU."""
        return cls(model) if supports(model) else None

    def is_current(self) -> bool:
        """False once any source weight was replaced or modified in place."""
        # plain dict lookups: this runs before every step (~0.3 ms for SmolLM2's 30 layers)
        return all(
            parent._modules[name] is child and _state(child) == seen
            for (parent, name, child), seen in zip(self._links, self._seen, strict=True)
        )

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: object
    ) -> torch.Tensor:
        """ids, positions: [B, 1]; mask: [B, T] (1 = attend; T counts the new token)."""
        dec = self._decoder
        x = dec.embed_tokens(ids)[:, 0]  # [B, C]
        b, c = x.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        nqk = (h + kv) * d
        cos, sin = dec.rotary_emb(x[:, None], position_ids=positions)  # [B, 1, D]
        # rotate_half(t) * sin == roll(t, D/2) * [-sin[:D/2], sin[D/2:]]
        sin = torch.cat((-sin[..., : d // 2], sin[..., d // 2 :]), dim=-1)
        # additive mask over the keys, only when some slot is padding or a dropped token
        bias = None
        if not bool(mask.all()):
            bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        for i, layer in enumerate(self._layers):
            y = (x @ layer.qkv) / self._rms_scale(x)  # the norm's weight is folded into qkv
            qk = y[:, :nqk].view(b, h + kv, d)
            qk = torch.addcmul(qk * cos, qk.roll(d // 2, dims=-1), sin)
            q = qk[:, :h].reshape(b, kv, h // kv, d)  # query heads grouped by their kv head
            k = qk[:, h:, None]  # [B, KV, 1, D]
            v = y[:, nqk:].view(b, kv, 1, d)
            keys, values = cache.layers[i].update(k, v)  # type: ignore[attr-defined]
            scores = q @ keys.transpose(-1, -2)  # [B, KV, G, T]; scaling folded into q
            if bias is not None:
                scores = scores + bias
            att = (torch.softmax(scores, dim=-1) @ values).reshape(b, h * d)
            x = torch.addmm(x, att, layer.o)
            g = (x @ layer.gate_up) / self._rms_scale(x)
            inter = g.shape[-1] // 2
            x = torch.addmm(x, F.silu(g[:, :inter]) * g[:, inter:], layer.down)
        return F.rms_norm(x, (c,), dec.norm.weight, self.eps)[:, None]

    def _rms_scale(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(sum(x^2) + C * eps) per row ([B, 1]): RMSNorm divides by sqrt(mean(x^2) +
        eps) = this / sqrt(C), and the sqrt(C) is folded into the fused matrices. Two fast
        kernels (vector_norm, hypot) where pow, mean, add and rsqrt are four slow ones."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return torch.hypot(norm, self._eps_term)


def supports(model: torch.nn.Module) -> bool:
    """True for a plain (no adapters, no biases) float32 Llama decoder on CPU."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    dec = model.get_decoder()
    needed = ("embed_tokens", "rotary_emb", "norm", "layers")
    if not all(hasattr(dec, name) for name in needed):
        return False
    try:
        weights = _weights(dec)
    except AttributeError:
        return False
    linear = all(
        type(p) is torch.nn.Linear and p.bias is None
        for layer in dec.layers
        for p in _projections(layer)
    )
    plain = all(w.dtype == torch.float32 and w.device.type == "cpu" for w in weights)
    return linear and plain and _rotates_whole_heads(dec, cfg)


def _rotates_whole_heads(dec: torch.nn.Module, cfg: object) -> bool:
    """The step rotates every dimension of a head; a rope variant that rotates only part of
    it (partial_rotary_factor) is left to the transformers forward."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    probe = torch.zeros(1, 1, cfg.hidden_size)
    with torch.no_grad():
        cos, _ = dec.rotary_emb(probe, position_ids=torch.zeros(1, 1, dtype=torch.long))
    return cos.shape[-1] == head_dim and head_dim % 2 == 0


def _projections(layer: torch.nn.Module) -> list[torch.nn.Module]:
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


def _weights(dec: torch.nn.Module) -> list[torch.Tensor]:
    return [
        child._parameters["weight"] for _, _, child in _links(dec) if "weight" in child._parameters
    ]


def _links(dec: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """(parent, attribute, module) down to every weight the step copies or reads: a module
    swapped for another (a LoRA wrapper) or a weight replaced or edited in place shows up as
    a change of the link or of the module's `_state`."""
    out = [(dec, n, getattr(dec, n)) for n in ("embed_tokens", "norm", "layers")]
    for i, layer in enumerate(dec.layers):
        a, m = layer.self_attn, layer.mlp
        out += [(dec.layers, str(i), layer), (layer, "self_attn", a), (layer, "mlp", m)]
        out += [(a, n, getattr(a, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        out += [(m, n, getattr(m, n)) for n in ("gate_proj", "up_proj", "down_proj")]
        out += [
            (layer, n, getattr(layer, n)) for n in ("input_layernorm", "post_attention_layernorm")
        ]
    return out


def _state(module: torch.nn.Module) -> tuple | None:
    """Identity, storage and in-place version of a module's weight (None: no weight)."""
    w = module._parameters.get("weight")
    return None if w is None else (id(w), w.data_ptr(), w._version)


def _fuse(layer: torch.nn.Module) -> _Layer:
    """The layer's projections stored [in, out], q|k|v and gate|up side by side, with the
    RMSNorm weights (times sqrt(C), see `LlamaStep._rms_scale`) and the attention scaling
    folded in: (x / rms(x) * w) @ W == (x @ diag(w) W) / rms(x), and scaling q scales q.k
    (rotary is linear, so the order does not matter)."""
    a, m = layer.self_attn, layer.mlp
    scaling = float(a.scaling)

    def stored_in_out(*ws: torch.Tensor) -> torch.Tensor:
        return torch.cat([w.detach() for w in ws]).t().contiguous()

    qkv = stored_in_out(a.q_proj.weight * scaling, a.k_proj.weight, a.v_proj.weight)
    gate_up = stored_in_out(m.gate_proj.weight, m.up_proj.weight)
    root_c = float(qkv.shape[0]) ** 0.5
    qkv.mul_(layer.input_layernorm.weight.detach()[:, None] * root_c)
    gate_up.mul_(layer.post_attention_layernorm.weight.detach()[:, None] * root_c)
    return _Layer(
        qkv=qkv,
        o=stored_in_out(a.o_proj.weight),
        gate_up=gate_up,
        down=stored_in_out(m.down_proj.weight),
    )


HUGE_PAGE = 2 << 20


def _into_arena(layers: list[_Layer]) -> list[_Layer]:
    """The same matrices, moved into one buffer backed by transparent huge pages where Linux
    offers them (`madvise`): a step streams ~0.4 GB of weights, and with 4 KiB pages the
    CPU's prefetchers stop at every page boundary (~6% slower matrix-vector products
    measured on the 2-core AMD VM)."""
    sizes = [getattr(layer, f.name).numel() for layer in layers for f in fields(_Layer)]
    arena = _huge_page_buffer(sum(sizes), layers[0].qkv.dtype)
    out, start = [], 0
    for layer in layers:
        moved = {}
        for f in fields(_Layer):
            src = getattr(layer, f.name)
            dst = arena[start : start + src.numel()].view(src.shape)
            dst.copy_(src)
            moved[f.name] = dst
            start += src.numel()
        out.append(replace(layer, **moved))
    return out


def _huge_page_buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if advise is None or anonymous is None:
        return torch.empty(numel, dtype=dtype)
    size = -(-numel * itemsize // HUGE_PAGE) * HUGE_PAGE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | anonymous)
    buf.madvise(advise)
    # the tensor's storage keeps `buf` alive (torch.frombuffer holds a reference)
    return torch.frombuffer(buf, dtype=dtype, count=numel)
