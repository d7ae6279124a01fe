"""The numba kernels of ranking.backends.q4 (this module imports numba; q4 imports it lazily).

Module-level functions, so numba's on-disk cache (`__pycache__`, or the user's cache
directory) serves them to later processes: compiling takes ~1 s, loading far less. Each
computes output columns in tiles of TILE; a tile's width is a compile-time constant for all
but the last tile (inlined helpers), so the inner loops vectorise fully.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE = 256  # output columns computed together (the inner vector loop)
# float rewrites the kernels may use: fused multiply-add, and reassociating the block sums
# (no assumptions about NaN or infinity, unlike numba's fastmath=True)
FASTMATH = {"contract", "reassoc"}


def _cached_jit(**options):
    """numba.njit with its on-disk cache where one can be written, else compiled once per
    process."""

    def decorate(func):
        try:
            return njit(cache=True, **options)(func)
        except RuntimeError:  # no writable cache location: read-only install, no home
            return njit(**options)(func)

    return decorate


# The low and high 4 bits of a code byte, kept uint8: numba would widen `c & 15` to int64,
# and int64-to-float is a slow vector conversion (none at all before AVX-512); uint8 converts
# through int32 (~25% faster kernels on the AMD VM).
@njit(inline="always")
def _low(c):  # pragma: no cover - compiled
    return np.uint8(c & np.uint8(15))


@njit(inline="always")
def _high(c):  # pragma: no cover - compiled
    return np.uint8(c >> np.uint8(4))


@njit(inline="always", fastmath=FASTMATH)
def _block_sums(xv, nb):  # pragma: no cover - compiled
    sums = np.empty(nb, np.float32)
    for b in range(nb):
        s = np.float32(0)
        for j in range(32):
            s += xv[b * 32 + j]
        sums[b] = s
    return sums


@njit(inline="always", fastmath=FASTMATH)
def _one_row_tile(codes, scale, offset, xv, sums, out, n0, w, acc, blk):  # pragma: no cover
    """Output columns n0 .. n0+w: per block, the codes' dot products with the inputs (two
    per byte: inputs j and j+16 of the block), times the scale, plus offset * input sum."""
    acc[:w] = 0
    for b in range(scale.shape[0]):
        blk[:w] = 0
        for j in range(16):
            lo_x = xv[b * 32 + j]
            hi_x = xv[b * 32 + 16 + j]
            for t in range(w):
                c = codes[b * 16 + j, n0 + t]
                blk[t] += lo_x * np.float32(_low(c)) + hi_x * np.float32(_high(c))
        s = sums[b]
        for t in range(w):
            acc[t] += blk[t] * scale[b, n0 + t] + offset[b, n0 + t] * s
    for t in range(w):
        out[n0 + t] = acc[t]


@_cached_jit(nogil=True, fastmath=FASTMATH)
def one_row(codes, scale, offset, x, out):  # pragma: no cover - compiled
    """out[0] = x[0] @ W.T for the blocks (codes, scale, offset); x [1, in], out [1, out]."""
    n_out = codes.shape[1]
    xv = x[0]
    ov = out[0]
    sums = _block_sums(xv, scale.shape[0])
    acc = np.empty(TILE, np.float32)
    blk = np.empty(TILE, np.float32)
    full = n_out // TILE * TILE
    for n0 in range(0, full, TILE):
        _one_row_tile(codes, scale, offset, xv, sums, ov, n0, TILE, acc, blk)
    if full < n_out:
        _one_row_tile(codes, scale, offset, xv, sums, ov, full, n_out - full, acc, blk)


@_cached_jit(nogil=True, fastmath=FASTMATH)
def dequantize(codes, scale, offset, out):  # pragma: no cover - compiled
    """out = W.T, float32 [in, out]."""
    for b in range(scale.shape[0]):
        for j in range(16):
            for t in range(codes.shape[1]):
                c = codes[b * 16 + j, t]
                out[b * 32 + j, t] = np.float32(_low(c)) * scale[b, t] + offset[b, t]
                out[b * 32 + 16 + j, t] = np.float32(_high(c)) * scale[b, t] + offset[b, t]
