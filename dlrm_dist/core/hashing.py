"""Counter-based random numbers: a pure function of (seed, stream, index).

The synthetic teacher and the multi-hot expansion need per-id random values for
tables of 40M rows without storing them, identical on every rank and in every
process. numpy's Generators are sequential, so a stateless integer hash
(splitmix64's finaliser) is used instead: ``uniform(seed, stream, idx)`` gives
the same value for the same arguments, wherever and whenever it is computed.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-mixed hash of uint64 values."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash64(seed: int, stream: int, idx: np.ndarray) -> np.ndarray:
    """A uint64 hash of ``idx`` in the random stream ``(seed, stream)``."""
    key = mix64(np.uint64((seed * 1_000_003 + stream) & 0xFFFFFFFFFFFFFFFF))
    with np.errstate(over="ignore"):
        return mix64(np.asarray(idx, dtype=np.uint64) * _GOLDEN + key)


def uniform(seed: int, stream: int, idx: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per element of ``idx`` (53-bit precision)."""
    return (hash64(seed, stream, idx) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def normal(seed: int, stream: int, idx: np.ndarray) -> np.ndarray:
    """Standard normal floats via Box-Muller on two hashed uniforms."""
    u1 = uniform(seed, 2 * stream, idx)
    u2 = uniform(seed, 2 * stream + 1, idx)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
