"""Undoing Content-Encoding with a cap on the decoded size: a compression bomb stops early.

httpx decodes a response body after reading it, in one go and without a limit, so half a
megabyte of gzip that inflates to gigabytes would be accepted (and held in memory) before
anything could refuse it. Every route embedkit reads an answer through (its own transport's
fast path, httpx's stock transport) undoes the encoding here instead, a bounded piece at a
time, and raises `ResponseTooLarge` as soon as the decoded body passes the limit: memory
stays near the limit, whatever the ratio.

The encodings are httpx's (`httpx._decoders.SUPPORTED_DECODERS`): identity, gzip, deflate
(zlib, or raw deflate as some servers send it), and, when their packages are installed, br
(brotli) and zstd (zstandard). Several encodings (`gzip, br`) are undone last first. An
encoding httpx does not know is left as it is, as httpx does.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping

from .parser import ResponseTooLarge

__all__ = ["decode_limited", "encodings_of"]

#: Decoded bytes produced per step: small enough that one step never holds much more
#: than the limit, large enough that a big legitimate answer takes few steps.
_STEP = 1 << 20

_Decoder = Callable[[bytes, int, str], bytes]


def encodings_of(headers: Mapping[str, str]) -> list[str]:
    """The Content-Encoding values of a response, in the order they were applied."""
    raw = headers.get("content-encoding", "")
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


def decode_limited(body: bytes, encodings: list[str], limit: int | None) -> bytes:
    """`body` with `encodings` undone (last applied first), refusing more than `limit` bytes."""
    for name in reversed(encodings):
        decoder = _DECODERS.get(name)
        if decoder is None:  # identity, or one httpx would not decode either
            continue
        body = decoder(body, limit if limit is not None else -1, name)
    return body


def _too_large(limit: int, name: str) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"Response body over the limit of {limit} bytes once decoded ({name}) (max_response_size)"
    )


def _zlib(body: bytes, limit: int, name: str) -> bytes:
    wbits = zlib.MAX_WBITS | 16 if name == "gzip" else zlib.MAX_WBITS
    try:
        return _inflate(zlib.decompressobj(wbits), body, limit, name)
    except zlib.error:
        if name != "deflate":
            raise _decoding_error(name) from None
    try:  # raw deflate, without the zlib header (some servers send it so; httpx accepts it)
        return _inflate(zlib.decompressobj(-zlib.MAX_WBITS), body, limit, name)
    except zlib.error:
        raise _decoding_error(name) from None


def _inflate(inflater: zlib._Decompress, body: bytes, limit: int, name: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    data = body
    while True:
        step = _STEP if limit < 0 else min(_STEP, limit - size + 1)
        chunk = inflater.decompress(data, step)
        size += len(chunk)
        if 0 <= limit < size:
            raise _too_large(limit, name)
        parts.append(chunk)
        data = inflater.unconsumed_tail
        if not data and (len(chunk) < step or inflater.eof):
            break
    return b"".join(parts)  # a truncated stream keeps what was decoded, as httpx does


def _brotli(body: bytes, limit: int, name: str) -> bytes:
    try:
        import brotli  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - without the package httpx does not decode br
        return body
    decompressor = brotli.Decompressor()
    if not hasattr(decompressor, "can_accept_more_data"):  # pragma: no cover - brotli < 1.2
        # no bounded output: refuse rather than inflate without a limit
        raise _decoding_error(f"{name} (needs brotli >= 1.2 to decode with a size limit)")
    parts: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            chunk = decompressor.process(data, output_buffer_limit=_STEP)
            data = b""
            size += len(chunk)
            if 0 <= limit < size:
                raise _too_large(limit, name)
            parts.append(chunk)
            if decompressor.is_finished() or (not chunk and decompressor.can_accept_more_data()):
                break
    except brotli.error:
        raise _decoding_error(name) from None
    return b"".join(parts)


def _zstd(body: bytes, limit: int, name: str) -> bytes:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - without the package httpx does not decode zstd
        return body
    parts: list[bytes] = []
    size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        )
        while True:
            chunk = reader.read(_STEP)
            if not chunk:
                break
            size += len(chunk)
            if 0 <= limit < size:
                raise _too_large(limit, name)
            parts.append(chunk)
    except zstandard.ZstdError:
        raise _decoding_error(name) from None
    return b"".join(parts)


def _decoding_error(name: str) -> Exception:
    import httpx

    return httpx.DecodingError(f"the response body is not valid {name}")


_DECODERS: dict[str, _Decoder] = {
    "gzip": _zlib,
    "deflate": _zlib,
    "br": _brotli,
    "zstd": _zstd,
}
