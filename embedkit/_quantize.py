"""Quantised embeddings: int8, uint8 and packed-bit vectors, and the rule embedkit uses.

Cohere (`embedding_types`) and Voyage (`output_dtype`) quantise on the server; for every
other server embedkit quantises the float answer here, with one documented rule, so
`dtype="int8"` works the same against any protocol:

* `int8`: each vector is scaled by its own largest magnitude, `round(127 * v / max|v|)`,
  values in [-127, 127]. Cosine similarity is unchanged by a per-vector scale, so it
  survives up to the rounding; dot products between vectors of different norms do not.
* `uint8`: the int8 value plus 128, in [1, 255].
* `ubinary`: one bit a dimension, set where the value is > 0, packed eight to a byte
  (`np.packbits`, the first dimension in the high bit): uint8, ceil(dim / 8) a vector.
* `binary`: the same bytes minus 128, as int8 (the "offset binary" Cohere, Voyage and
  sentence-transformers return).

The rule for int8 is embedkit's own: providers calibrate their int8 on their training data,
so a provider's int8 and embedkit's int8 of the same float vector differ by design.

Inside the scheduler a quantised row travels as float32 holding the exact integer values
(every int8 and uint8 value is a float32 exactly), so batching, dedup and the cache do not
know about dtypes; `as_dtype` gives the caller the real array at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._config import Dtype, Matrix

__all__ = [
    "DTYPES",
    "as_dtype",
    "carried",
    "check_dtype",
    "is_packed",
    "numpy_dtype",
    "quantize",
    "unpackbits",
]

DTYPES: tuple[Dtype, ...] = ("float32", "int8", "uint8", "binary", "ubinary")
_NUMPY: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}


def check_dtype(dtype: str) -> Dtype:
    """`dtype` if it is one embedkit returns, else a `ValueError` naming the choices."""
    if dtype not in _NUMPY:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype  # type: ignore[return-value]


def numpy_dtype(dtype: Dtype) -> type[np.generic]:
    """The numpy element type of `dtype` (binary: int8, ubinary: uint8)."""
    return _NUMPY[dtype]


def is_packed(dtype: str) -> bool:
    """Whether a vector of `dtype` holds eight dimensions a byte."""
    return dtype in ("binary", "ubinary")


def quantize(matrix: npt.ArrayLike, dtype: Dtype) -> npt.NDArray[Any]:
    """Quantise float vectors (rows) to `dtype` with embedkit's rule (module docstring)."""
    floats = np.asarray(matrix, dtype=np.float32)
    if dtype == "float32":
        return floats
    squeeze = floats.ndim == 1
    rows = floats.reshape(1, -1) if squeeze else floats
    if is_packed(dtype):
        packed = np.packbits(rows > 0, axis=1)
        out: npt.NDArray[Any] = (
            packed if dtype == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
        )
    else:
        scale = np.abs(rows).max(axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        ints = np.rint(rows * (127.0 / scale)).clip(-127, 127)
        out = ints.astype(np.int8) if dtype == "int8" else (ints + 128).astype(np.uint8)
    return out[0] if squeeze else out


def carried(matrix: Matrix, dtype: Dtype) -> Matrix:
    """`quantize`, as the float32 carrier rows the scheduler moves (exact integer values)."""
    if dtype == "float32":
        return matrix
    return np.ascontiguousarray(quantize(matrix, dtype), dtype=np.float32)


def as_dtype(matrix: npt.NDArray[Any], dtype: Dtype) -> npt.NDArray[Any]:
    """Carrier rows as the caller's array of `dtype` (a no-op for float32)."""
    if dtype == "float32":
        return matrix
    return matrix.astype(_NUMPY[dtype])


def unpackbits(packed: npt.ArrayLike, dim: int | None = None) -> npt.NDArray[np.uint8]:
    """Packed bit vectors (`dtype="ubinary"` uint8 or `"binary"` int8) as 0/1 per dimension.

    Args:
        packed: a vector or matrix of packed bytes, eight dimensions a byte, high bit first.
        dim: the embedding size, to drop the padding bits of a size that is not a multiple
            of 8 (default: all bits, 8 a byte).

    Returns:
        uint8 zeros and ones of shape (..., dim).
    """
    array = np.asarray(packed)
    if array.dtype == np.int8:
        array = (array.astype(np.int16) + 128).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(
            f"unpackbits takes uint8 (ubinary) or int8 (binary) bytes, not {array.dtype}"
        )
    bits = np.unpackbits(array, axis=-1)
    if dim is not None:
        if not 0 < dim <= bits.shape[-1]:
            raise ValueError(f"dim must be between 1 and {bits.shape[-1]}, not {dim}")
        bits = bits[..., :dim]
    return bits
