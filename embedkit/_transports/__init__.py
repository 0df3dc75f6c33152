"""Transports: embedkit's HTTP/1.1 transport for httpx and the routing that picks it or
httpx's stock transport.
"""

from __future__ import annotations

from .route import build_client, send_limited
from .transport import FastTransport, PreparedPost, ResponseTooLarge

__all__ = ["FastTransport", "PreparedPost", "ResponseTooLarge", "build_client", "send_limited"]
