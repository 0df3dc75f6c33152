"""The wire formats embedkit speaks: one module a server family."""

from __future__ import annotations

from ._base import BackendInfo, Options, WireProtocol
from .hf import HFProtocol
from .openai import OpenAIProtocol
from .tei import TEIProtocol

__all__ = [
    "PROTOCOLS",
    "BackendInfo",
    "HFProtocol",
    "OpenAIProtocol",
    "Options",
    "TEIProtocol",
    "WireProtocol",
]

PROTOCOLS: dict[str, type[WireProtocol]] = {
    "hf": HFProtocol,
    "tei": TEIProtocol,
    "openai": OpenAIProtocol,
}
