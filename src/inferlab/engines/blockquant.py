"""Block-wise weight quantization in numpy, in the layouts of ONNX Runtime's MatMulNBits.

A weight W [N, K] (out, in) is cut into blocks of `block` values along K. Two formats:
- affine 4-bit, the GGUF Q4_1 rule: w = q * scale + offset, q in 0..15, scale = (max - min) / 15,
  offset = min. Weights that already lie on such a grid (a model dequantized from Q4_1, like the
  bundled SmolLM2) are reproduced exactly: the block's minimum is level 0, its maximum level 15.
- symmetric 8-bit, the GGUF Q8_0 rule: w = q * scale, q in -127..127, scale = max|w| / 127.
`max_error` says how far the grid is from the given weights (0 up to float rounding when exact)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Quantized:
    packed: np.ndarray  # uint8 [N, K / block, block * bits / 8]: MatMulNBits' B
    scales: np.ndarray  # float32 [N, K / block]
    offsets: np.ndarray | None  # float32 [N, K / block] (affine only): the block minimum
    bits: int
    block: int
    max_error: float  # max |dequantized - w| over the matrix
    max_abs: float  # max |w|: the error's yardstick

    @property
    def exact(self) -> bool:
        """The grid reproduces the weights up to float32 rounding."""
        return self.max_error <= 1e-6 * max(self.max_abs, 1e-30)

    def dequantize(self) -> np.ndarray:
        n, nb, _ = self.packed.shape
        q = unpack(self.packed, self.bits).astype(np.float32)
        if self.bits == 8:
            q -= 128.0
        w = q * self.scales[:, :, None]
        if self.offsets is not None:
            w += self.offsets[:, :, None]
        return w.reshape(n, nb * self.block)


def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    n, k = w.shape
    if k % block:
        raise ValueError(f"input width {k} is not a multiple of the block size {block}")
    return np.asarray(w, dtype=np.float32).reshape(n, k // block, block)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """q [N, nb, block] of unsigned levels -> MatMulNBits bytes (4 bits: two per byte, the
    even element in the low nibble)."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def affine4(w: np.ndarray, block: int = 32) -> Quantized:
    b = _blocks(w, block)
    lo, hi = b.min(axis=-1), b.max(axis=-1)
    scale = (hi - lo) / 15.0
    safe = np.where(scale > 0, scale, 1.0)  # a constant block: every q is 0, w = offset
    q = np.clip(np.rint((b - lo[..., None]) / safe[..., None]), 0, 15)
    result = Quantized(pack(q, 4), scale.astype(np.float32), lo.astype(np.float32), 4, block, 0.0,
                       float(np.abs(b).max(initial=0.0)))
    result.max_error = float(np.abs(result.dequantize() - b.reshape(w.shape)).max(initial=0.0))
    return result


def symmetric8(w: np.ndarray, block: int = 32) -> Quantized:
    b = _blocks(w, block)
    amax = np.abs(b).max(axis=-1)
    scale = amax / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(b / safe[..., None]), -127, 127) + 128  # stored with zero point 128
    result = Quantized(pack(q, 8), scale.astype(np.float32), None, 8, block, 0.0,
                       float(amax.max(initial=0.0)))
    result.max_error = float(np.abs(result.dequantize() - b.reshape(w.shape)).max(initial=0.0))
    return result
