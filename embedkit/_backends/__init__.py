"""Backends: the `Backend` protocol beside its implementations (HTTP, balanced replicas,
local model), the wire protocols, the decoding of answers, and the one factory that builds
a backend from an embedder's settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .balancer import BalancedBackend
from .base import Backend, BackendStats, CompleteBackend, Listening, complete, kind_sender
from .factory import URLs, build_backend, endpoints_of
from .http import DEFAULT_MAX_RESPONSE_SIZE, DEFAULT_TIMEOUT, HttpBackend
from .protocols import PROTOCOLS, BackendInfo, OpenAIProtocol, Options
from .replica import Endpoint, Replica

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_TIMEOUT",
    "PROTOCOLS",
    "Backend",
    "BackendInfo",
    "BackendStats",
    "BalancedBackend",
    "CompleteBackend",
    "Endpoint",
    "HttpBackend",
    "Listening",
    "LocalBackend",
    "LocalModel",
    "OpenAIProtocol",
    "Options",
    "Replica",
    "URLs",
    "build_backend",
    "cached_snapshot",
    "check_installed",
    "complete",
    "endpoints_of",
    "is_packaged",
    "kind_sender",
    "normalize_rows",
]

# The local backend's module is loaded when one of its names is first asked for, so
# `import embedkit` does not load it (the light-import test holds it to that).
_LOCAL = {
    "DEFAULT_LOCAL_MODEL",
    "LocalBackend",
    "Listening",
    "LocalModel",
    "cached_snapshot",
    "check_installed",
    "is_packaged",
    "kind_sender",
    "normalize_rows",
}

if TYPE_CHECKING:
    from .local import (
        DEFAULT_LOCAL_MODEL,
        LocalBackend,
        LocalModel,
        cached_snapshot,
        check_installed,
        is_packaged,
        normalize_rows,
    )


def __getattr__(name: str) -> Any:
    if name in _LOCAL:
        from . import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
