"""The wire formats embedkit speaks: one module a server family."""

from __future__ import annotations

from ._base import BackendInfo, Options, WireProtocol
from .cohere import CohereProtocol
from .gemini import GeminiProtocol
from .hf import HFProtocol
from .ollama import OllamaProtocol
from .openai import OpenAIProtocol
from .tei import TEIProtocol
from .voyage import VoyageProtocol

__all__ = [
    "PROTOCOLS",
    "BackendInfo",
    "CohereProtocol",
    "GeminiProtocol",
    "HFProtocol",
    "OllamaProtocol",
    "OpenAIProtocol",
    "Options",
    "TEIProtocol",
    "VoyageProtocol",
    "WireProtocol",
]

PROTOCOLS: dict[str, type[WireProtocol]] = {
    "hf": HFProtocol,
    "tei": TEIProtocol,
    "openai": OpenAIProtocol,
    "cohere": CohereProtocol,
    "voyage": VoyageProtocol,
    "gemini": GeminiProtocol,
    "ollama": OllamaProtocol,
}
