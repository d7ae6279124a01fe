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

Where the projections are 4-bit blocks in disguise (a GGUF Q4_1 file such as the default
SmolLM2, dequantized to float32 by transformers), the step keeps them as 4-bit codes and
multiplies with the kernels of :mod:`ranking.backends.q4`: the same weights, bit for bit,
read at 0.75 instead of 4 bytes each (the RMSNorm weights then scale the input vector
instead of the matrix, which would no longer be 4-bit). Other models keep the float32 form.

The result equals the transformers forward up to float rounding (tested on a random tiny
Llama to 1e-5, with padded and masked batches, and on the default model);
benchmarks/bench_ranking.py times it against the transformers forward in the same run (its
`incremental, transformers forward` row; `--skip plain` leaves that row out).

The weights are copied once (the fused layout needs its own storage: +~0.42 GB for a
135M-parameter model in float32, +~0.08 GB as 4-bit blocks). The copies are tied to the
exact weight tensors and their in-place version counters: a model whose weights were
replaced or edited (training, LoRA wrapping) is detected by :meth:`LlamaStep.is_current`
and the caller builds a new step or falls back.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ranking.backends import q4
from ranking.backends.q4 import Q4Matrix

# Model families whose decoder layers have exactly the structure computed below.
SUPPORTED_MODEL_TYPES = ("llama",)


@dataclass(frozen=True)
class Q4LowRank:
    """A [out, in] weight W = Q4 + down-up: the file's 4-bit blocks plus a low-rank
    correction (a LoRA adapter merged into a 4-bit model: `keep_low_rank_parts`), so
    x W^T = q4(x) + (x @ down) @ up reads the blocks and two thin matrices instead of W in
    float32."""

    q4: Q4Matrix
    down: torch.Tensor  # [in, r]
    up: torch.Tensor  # [r, out]

    @property
    def shape(self) -> tuple[int, int]:
        return self.q4.shape


# A projection: float32 stored [in, out], the 4-bit blocks of an [out, in] weight, or those
# blocks plus a low-rank correction.
Matrix = torch.Tensor | Q4Matrix | Q4LowRank


@dataclass(frozen=True)
class _Layer:
    qkv: Matrix  # C -> (H + 2 KV) * D
    o: Matrix  # H * D -> C
    gate_up: Matrix  # C -> 2 * I
    down: Matrix  # I -> C
    # RMSNorm weights times sqrt(C), applied to the input where they are not folded into
    # the matrix (4-bit blocks); None where they are
    attn_norm: torch.Tensor | None = None
    mlp_norm: torch.Tensor | None = None


class LlamaStep:
    """`step(ids, positions, mask, cache)` -> last hidden states [B, 1, C] (after the final
    norm), appending each row's key/value to `cache` like the transformers forward does."""

    def __init__(self, model: torch.nn.Module, allow_q4: bool = True) -> None:
        dec = model.get_decoder()
        cfg = model.config
        self.model = model
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
            blocks = _q4_blocks(dec) if allow_q4 else [None] * len(dec.layers)
            layers = [
                _fuse(layer) if blocks[i] is None else _fuse_q4(layer, blocks[i])
                for i, layer in enumerate(dec.layers)
            ]
            self._layers = _into_arena(layers)
        # the form the projections are read in (benchmarks report it): "q4", "float32", or
        # "q4 (k of n layers)" — a hybrid model's LoRA, merged into its top layers, leaves
        # those in float32 and the frozen ones below as the file's 4-bit blocks
        n_q4 = sum(b is not None for b in blocks)
        n_layers = len(blocks)
        self.weights = {0: "float32", n_layers: "q4"}.get(n_q4, f"q4 ({n_q4} of {n_layers} layers)")
        if any(isinstance(m, Q4LowRank) for b in blocks if b for m in b.values()):
            self.weights += " + low-rank"  # a merged LoRA read as blocks plus its factors
        self.allow_q4 = allow_q4
        # bytes of the step's own weight copies (what a step streams, besides the KV cache)
        arrays = [a for la in self._layers for m in _matrices(la) for a in _arrays(m)]
        self.nbytes = sum(a.nbytes for a in arrays)
        self._scratch = threading.local()  # per-thread buffer for many-row 4-bit products

    @classmethod
    def build(cls, model: torch.nn.Module, allow_q4: bool = True) -> LlamaStep | None:
        """A step for `model`, or None when it is not a plain float32 Llama on CPU;
        `allow_q4=False` keeps 4-bit projections in float32 (for comparisons)."""
        return cls(model, allow_q4) if supports(model) else None

    def is_current(self) -> bool:
        """False once any source weight was replaced or modified in place."""
        # plain dict lookups: this runs before every step (~0.3 ms for SmolLM2's 30 layers)
        return all(
            parent._modules[name] is child and _state(child) == seen
            for (parent, name, child), seen in zip(self._links, self._seen, strict=True)
        )

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: object,
        inject: tuple[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids, positions: [B, 1]; mask: [B, T] (1 = attend; T counts the new token).
        `inject` = (layer, f): the stream entering that layer ([B, 1, C]) becomes f(stream),
        what a forward pre-hook on the layer module would do (a hybrid model's soft tokens,
        ranking.hybrid) — the step runs the layers without calling their modules.
        `embeds` ([B, 1, C]): the input stream itself instead of the embedding of `ids` (a
        split hybrid's upper layers, ranking.hybrid_split)."""
        dec = self._decoder
        x = (dec.embed_tokens(ids) if embeds is None else embeds)[:, 0]  # [B, C]
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
            if inject is not None and i == inject[0]:
                x = inject[1](x[:, None])[:, 0]
            # the norm: its weight scales x or is folded into qkv; 1/rms scales the product
            y = self._mm(_times(x, layer.attn_norm), layer.qkv) / self._rms_scale(x)
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
            x = self._mm(att, layer.o, residual=x)
            g = self._mm(_times(x, layer.mlp_norm), layer.gate_up) / self._rms_scale(x)
            inter = g.shape[-1] // 2
            x = self._mm(F.silu(g[:, :inter]) * g[:, inter:], layer.down, residual=x)
        return F.rms_norm(x, (c,), dec.norm.weight, self.eps)[:, None]

    def _mm(self, x: torch.Tensor, w: Matrix, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x @ w (+ residual). One row through the 4-bit kernel; several rows through MKL on
        the weight expanded into a scratch buffer (faster than both the kernel per row and a
        float32 copy: the expanded matrix is read from cache)."""
        if isinstance(w, torch.Tensor):
            return x @ w if residual is None else torch.addmm(residual, x, w)
        if isinstance(w, Q4LowRank):
            return torch.addmm(self._mm(x, w.q4, residual), x @ w.down, w.up)
        if x.shape[0] == 1:
            return q4.q4_matmul(x, w, residual)
        out, inp = w.shape
        dense = q4.dequantize_into(w, self._scratch_buffer(out * inp).view(inp, out))
        return x @ dense if residual is None else torch.addmm(residual, x, dense)

    def _scratch_buffer(self, numel: int) -> torch.Tensor:
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.numel() < numel:
            buf = self._scratch.buf = torch.empty(numel, dtype=torch.float32)
        return buf[:numel]

    def _rms_scale(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(sum(x^2) + C * eps) per row ([B, 1]): RMSNorm divides by sqrt(mean(x^2) +
        eps) = this / sqrt(C), and the sqrt(C) is folded into the fused matrices. Two fast
        kernels (vector_norm, hypot) where pow, mean, add and rsqrt are four slow ones."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return torch.hypot(norm, self._eps_term)


def _times(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return x if w is None else x * w


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


def _q4_blocks(dec: torch.nn.Module) -> list[dict[str, Q4Matrix] | None]:
    """Per layer, its projections as 4-bit blocks, or None where any one of them is not
    (every layer None when numba, which compiles the kernels, is missing)."""
    if not q4.available():
        return [None] * len(dec.layers)
    return [_layer_q4(layer) for layer in dec.layers]


def _layer_q4(layer: torch.nn.Module) -> dict[str, Q4Matrix | Q4LowRank] | None:
    found = {}
    for name, proj in zip(_PROJECTIONS, _projections(layer), strict=True):
        blocks = q4.find_q4(proj.weight) or _low_rank_of(proj)
        if blocks is None:
            return None
        found[name] = blocks
    return found


# the attribute `keep_low_rank_parts` leaves on a merged projection: (its weight's `_state`
# at the merge, the Q4LowRank that weight equals)
_LOW_RANK = "_q4_low_rank"


def keep_low_rank_parts(peft_model: torch.nn.Module) -> Callable[[], None]:
    """Call before `merge_and_unload()` of a LoRA-adapted 4-bit model, and the returned
    function after it: each merged projection whose base weight was 4-bit blocks then
    remembers those blocks and its adapter's factors (`Q4LowRank`), so the step keeps
    reading the file's blocks where the merged weight alone is float32. A weight changed
    after the merge (its `_state` differs) forgets them: the step falls back to float32."""
    parts = []
    for module in peft_model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        base = getattr(module, "base_layer", None)
        if not lora_a or not lora_b or not isinstance(base, torch.nn.Linear):
            continue
        blocks = q4.find_q4(base.weight) if q4.available() else None
        if blocks is None or len(lora_a) != 1:
            continue
        (name,) = lora_a.keys()
        if getattr(module, "use_dora", {}).get(name):  # DoRA's merge is not W + B A
            continue
        down = lora_a[name].weight.detach().t().contiguous()  # [in, r]
        up = (lora_b[name].weight.detach() * float(module.scaling[name])).t().contiguous()
        parts.append((base, Q4LowRank(blocks, down, up)))

    def attach() -> None:
        for linear, low_rank in parts:
            setattr(linear, _LOW_RANK, (_state(linear), low_rank))

    return attach


def _low_rank_of(proj: torch.nn.Module) -> Q4LowRank | None:
    kept = getattr(proj, _LOW_RANK, None)
    return kept[1] if kept is not None and kept[0] == _state(proj) else None


_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def _fuse_q4(layer: torch.nn.Module, blocks: dict[str, Q4Matrix | Q4LowRank]) -> _Layer:
    """As `_fuse`, for 4-bit blocks: q|k|v and gate|up side by side, the attention scaling
    folded into q's block scales (and low-rank correction); the norm weights stay vectors
    (see `_Layer`)."""
    a = layer.self_attn
    root_c = float(blocks["q"].shape[1]) ** 0.5
    return _Layer(
        qkv=_side_by_side(_scaled(blocks["q"], float(a.scaling)), blocks["k"], blocks["v"]),
        o=blocks["o"],
        gate_up=_side_by_side(blocks["gate"], blocks["up"]),
        down=blocks["down"],
        attn_norm=layer.input_layernorm.weight.detach() * root_c,
        mlp_norm=layer.post_attention_layernorm.weight.detach() * root_c,
    )


def _scaled(m: Q4Matrix | Q4LowRank, factor: float) -> Q4Matrix | Q4LowRank:
    if isinstance(m, Q4Matrix):
        return m.scaled(factor)
    return Q4LowRank(m.q4.scaled(factor), m.down, m.up * factor)


def _side_by_side(*ms: Q4Matrix | Q4LowRank) -> Q4Matrix | Q4LowRank:
    """The matrices' outputs side by side: the blocks concatenated and, where any has a
    low-rank correction, theirs stacked block-diagonally (rank 0 for the others)."""
    blocks = q4.concat_out(*(m.q4 if isinstance(m, Q4LowRank) else m for m in ms))
    if not any(isinstance(m, Q4LowRank) for m in ms):
        return blocks
    inp = blocks.shape[1]
    downs = [m.down if isinstance(m, Q4LowRank) else torch.zeros(inp, 0) for m in ms]
    ups = [m.up if isinstance(m, Q4LowRank) else torch.zeros(0, m.shape[0]) for m in ms]
    return Q4LowRank(blocks, torch.cat(downs, dim=1).contiguous(), torch.block_diag(*ups))


HUGE_PAGE = 2 << 20


def _into_arena(layers: list[_Layer]) -> list[_Layer]:
    """The same matrices, moved into one buffer backed by transparent huge pages where Linux
    offers them (`madvise`): a step streams all the weights, and with 4 KiB pages the
    CPU's prefetchers stop at every page boundary (~6% slower matrix-vector products
    measured on the 2-core AMD VM)."""
    arrays = [a for layer in layers for m in _matrices(layer) for a in _arrays(m)]
    arena = _huge_page_buffer(sum(_aligned(a.nbytes) for a in arrays), torch.uint8).numpy()
    start = 0

    def moved(a: np.ndarray) -> np.ndarray:
        nonlocal start
        dst = arena[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
        dst[...] = a
        start += _aligned(a.nbytes)
        return dst

    def moved_matrix(m: Matrix) -> Matrix:
        if isinstance(m, Q4LowRank):
            down, up = (torch.from_numpy(moved(t.numpy())) for t in (m.down, m.up))
            return Q4LowRank(moved_matrix(m.q4), down, up)  # type: ignore[arg-type]
        if isinstance(m, Q4Matrix):
            return Q4Matrix(*(moved(a) for a in _arrays(m)))
        return torch.from_numpy(moved(m.numpy()))

    return [
        replace(layer, **{name: moved_matrix(getattr(layer, name)) for name in _MATRIX_FIELDS})
        for layer in layers
    ]


# the _Layer fields that hold projections (the rest are norm vectors, left where they are)
_MATRIX_FIELDS = ("qkv", "o", "gate_up", "down")


def _matrices(layer: _Layer) -> list[Matrix]:
    return [getattr(layer, name) for name in _MATRIX_FIELDS]


def _arrays(m: Matrix) -> list[np.ndarray]:
    if isinstance(m, Q4LowRank):
        return [*_arrays(m.q4), m.down.numpy(), m.up.numpy()]
    return [m.codes, m.scale, m.offset] if isinstance(m, Q4Matrix) else [m.numpy()]


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 64) * 64  # cache-line aligned starts


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
