"""4-bit weight blocks: found in dequantized GGUF weights, and multiplied without expanding.

Why: a one-token decoding step on CPU is bound by reading the weights. A model loaded from a
GGUF file whose projections are Q4_1 (the default SmolLM2) is held by transformers as float32,
4 bytes per weight, yet every block of 32 weights along the input dimension is exactly
`scale * q + offset` with q in 0..15: the numbers the file stored. Read as 4-bit codes plus
one scale and one offset per block (0.75 bytes per weight), the same matrix-vector product
moves ~5x fewer bytes.

:func:`find_q4` recovers the blocks from a float32 weight and checks the recovery: the weight
is used in 4-bit form only when `scale * q + offset`, computed in float32 as the GGUF
dequantizer does, reproduces every weight bit for bit. Any other weight (a Hugging Face
float32 or bfloat16 model, a fine-tuned one) returns None and keeps its float32 path.

:func:`q4_matmul` computes `x @ W.T` for the recovered W: per block, the dot product of the
inputs with the codes, times the scale, plus the offset times the sum of the inputs. That is
the same sum as with the expanded weights, in another order (float rounding differs, ~1e-6
relative). The kernels are numba-compiled loops that vectorise over 256 output columns at
a time and run on the calling thread; they release the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # weights per (scale, offset) pair along the input dimension, as in GGUF Q4_0/Q4_1


@dataclass(frozen=True)
class Q4Matrix:
    """A [out, in] weight as 4-bit codes. `codes[b * 16 + j, n]` holds the codes of inputs
    b*32+j (low nibble) and b*32+16+j (high nibble) of output n (GGUF's pairing inside a
    block), stored input-major so the kernel reads consecutive outputs as one vector;
    `scale[b, n]` and `offset[b, n]` turn block b's codes of output n into weights."""

    codes: np.ndarray  # uint8 [in / 2, out]
    scale: np.ndarray  # float32 [in / 32, out]
    offset: np.ndarray  # float32 [in / 32, out]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in), as the weight it came from."""
        return self.codes.shape[1], self.codes.shape[0] * 2

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scale.nbytes + self.offset.nbytes

    def dequantize(self) -> torch.Tensor:
        """The float32 [out, in] weight (tests and checks)."""
        nb, out = self.scale.shape
        c = torch.from_numpy(self.codes).reshape(nb, 16, out).to(torch.int32)
        q = torch.cat((c & 15, c >> 4), dim=1).to(torch.float32)  # [nb, 32, out]
        w = q * torch.from_numpy(self.scale)[:, None] + torch.from_numpy(self.offset)[:, None]
        return w.reshape(nb * BLOCK, out).t().contiguous()

    def scaled(self, factor: float) -> Q4Matrix:
        """The matrix times `factor` (exact for a power of two, such as 1/sqrt(64))."""
        f = np.float32(factor)
        return Q4Matrix(self.codes, self.scale * f, self.offset * f)


def find_q4(weight: torch.Tensor) -> Q4Matrix | None:
    """The weight's 4-bit blocks, or None unless every block of 32 is `scale * q + offset`
    (q in 0..15, covering 0 and 15 as GGUF's Q4_1 quantizer does) bit for bit in float32."""
    if weight.dtype != torch.float32 or weight.dim() != 2 or weight.shape[1] % BLOCK:
        return None
    out, inp = weight.shape
    blocks = weight.detach().reshape(out, inp // BLOCK, BLOCK)
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    raw = (hi - lo) / 15
    # GGUF stores the scale as float16; a scale that is not one is tried as computed
    for scale in (raw.to(torch.float16).to(torch.float32), raw):
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round((blocks - lo) / safe).clamp_(0, 15)
        if torch.equal(scale * q + lo, blocks):
            return _pack(q.to(torch.uint8), scale[..., 0], lo[..., 0])
    return None


def _pack(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> Q4Matrix:
    """q [out, nb, 32] uint8; scale, offset [out, nb] -> the input-major packed layout."""
    codes = q[..., :16] | (q[..., 16:] << 4)  # [out, nb, 16]
    out = q.shape[0]
    return Q4Matrix(
        codes=np.ascontiguousarray(codes.reshape(out, -1).t().numpy()),
        scale=np.ascontiguousarray(scale.t().numpy()),
        offset=np.ascontiguousarray(offset.t().numpy()),
    )


def _kernels():
    """The compiled kernels (ranking.backends.q4_kernels imports numba)."""
    from ranking.backends import q4_kernels

    return q4_kernels


def available() -> bool:
    """True when numba (the kernels' compiler) imports."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def concat_out(*ms: Q4Matrix) -> Q4Matrix:
    """The matrices' outputs side by side (fusing q|k|v or gate|up)."""
    return Q4Matrix(
        codes=np.concatenate([m.codes for m in ms], axis=1),
        scale=np.concatenate([m.scale for m in ms], axis=1),
        offset=np.concatenate([m.offset for m in ms], axis=1),
    )


def q4_matmul(x: torch.Tensor, m: Q4Matrix, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ W.T` (+ `residual`) for one row x [1, in] float32 on CPU: [1, out]."""
    if x.shape[0] != 1:
        raise ValueError(f"q4_matmul takes one row, got {x.shape[0]}: use dequantize_into")
    out = torch.empty(1, m.codes.shape[1], dtype=torch.float32)
    _kernels().one_row(m.codes, m.scale, m.offset, x.detach().contiguous().numpy(), out.numpy())
    return out if residual is None else out.add_(residual)


def dequantize_into(m: Q4Matrix, out: torch.Tensor) -> torch.Tensor:
    """W.T, float32 [in, out], written into `out` (a reused buffer): several rows are faster
    as one MKL product with the expanded weight than through the one-row kernel each."""
    if out.shape != (m.shape[1], m.shape[0]) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 {(m.shape[1], m.shape[0])}, got {out.shape}")
    _kernels().dequantize(m.codes, m.scale, m.offset, out.numpy())
    return out
