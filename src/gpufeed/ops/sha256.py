"""``sha256``: any bytes → their 32-byte SHA-256 digest.

The reference is SHA-256 written in NumPy over a whole batch (FIPS 180-4),
independent of ``hashlib``, so that it is a real oracle for the CUDA version.
The CPU backend uses ``hashlib`` instead, which is faster per message.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from gpufeed.ops.base import I64, U8, Bools, Op, cuda_file

U32 = npt.NDArray[np.uint32]

_K = np.array(
    [
        0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
        0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
        0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
        0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
        0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
        0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
        0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
        0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
        0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
        0xC67178F2,
    ],
    dtype=np.uint32,
)  # fmt: skip
_H0 = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.uint32,
)


def _rotr(x: U32, n: int) -> U32:
    return (x >> np.uint32(n)) | (x << np.uint32(32 - n))


def _pad(payloads: U8, lens: I64) -> tuple[U32, I64]:
    """Padded messages as big-endian words ``(n, blocks*16)`` and each one's block count."""
    n = len(lens)
    blocks = (lens + 9 + 63) // 64
    width = int(blocks.max(initial=1)) * 64
    buf = np.zeros((n, width), dtype=np.uint8)
    cols = np.arange(min(payloads.shape[1], width))
    buf[:, : len(cols)] = np.where(cols[None, :] < lens[:, None], payloads[:, : len(cols)], 0)
    rows = np.arange(n)
    buf[rows, lens] = 0x80
    bit_len = (lens.astype(np.uint64) * np.uint64(8)).astype(">u8").view(np.uint8).reshape(n, 8)
    end = blocks * 64
    buf[rows[:, None], end[:, None] - 8 + np.arange(8)[None, :]] = bit_len
    return buf.view(">u4").astype(np.uint32), blocks


def sha256_batch(payloads: U8, lens: I64) -> U8:
    """SHA-256 of every row's first ``lens[i]`` bytes, as an ``(n, 32)`` uint8 array."""
    words, blocks = _pad(payloads, lens)
    n = len(lens)
    state = np.tile(_H0, (n, 1))
    with np.errstate(over="ignore"):
        for block in range(int(blocks.max(initial=0))):
            w = np.empty((64, n), dtype=np.uint32)
            w[:16] = words[:, block * 16 : block * 16 + 16].T
            for t in range(16, 64):
                s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> np.uint32(3))
                s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> np.uint32(10))
                w[t] = w[t - 16] + s0 + w[t - 7] + s1
            a, b, c, d, e, f, g, h = state.T.copy()
            for t in range(64):
                t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g))
                t1 = t1 + _K[t] + w[t]
                t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
                h, g, f, e, d, c, b, a = g, f, e, d + t1, c, b, a, t1 + t2
            active = (block < blocks)[:, None]
            state = np.where(active, state + np.stack([a, b, c, d, e, f, g, h], axis=1), state)
    return state.astype(">u4").view(np.uint8).reshape(n, 32)


class Sha256(Op):
    name = "sha256"
    length_rule = "any length"
    cuda_function = "gpufeed_op_sha256"

    def valid_lengths(self, lens: I64) -> Bools:
        return lens >= 0

    def output_lengths(self, lens: I64) -> I64:
        return np.full_like(lens, 32)

    def reference(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        return sha256_batch(payloads, lens), np.full(len(lens), 32, dtype=np.int64)

    def cpu(self, payloads: U8, lens: I64) -> tuple[U8, I64]:
        out = np.empty((len(lens), 32), dtype=np.uint8)
        for i, n in enumerate(lens.tolist()):
            out[i] = np.frombuffer(hashlib.sha256(payloads[i, :n].tobytes()).digest(), np.uint8)
        return out, np.full(len(lens), 32, dtype=np.int64)

    @property
    def cuda_source(self) -> str:
        return cuda_file("sha256.cu")
