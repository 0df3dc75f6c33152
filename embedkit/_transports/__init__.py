"""Transports: embedkit's HTTP/1.1 transport for httpx and the routing that picks it or
httpx's stock transport.

The transport is four modules of one concept each: transport.py (`FastTransport`: the
pool, reuse, re-sending), connection.py (one connection's exchange: writes, reads,
timeouts), parser.py (reading a response with llhttp) and request.py (the bytes of a
request, and the prepared request head of the backend's fast path). decoding.py undoes
Content-Encoding with a cap on the decoded size, for every route.
"""

from __future__ import annotations

from .connection import RawResponse
from .decoding import decode_limited, encodings_of
from .parser import ResponseTooLarge
from .request import PreparedPost
from .route import build_client, send_limited
from .transport import FastTransport

__all__ = [
    "FastTransport",
    "PreparedPost",
    "RawResponse",
    "ResponseTooLarge",
    "build_client",
    "decode_limited",
    "encodings_of",
    "send_limited",
]
