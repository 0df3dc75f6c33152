"""Where tokens come from, and the wrapper that keeps them out of reprs and logs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["TOKEN_ENV", "Secret", "resolve_token"]

#: The environment variables each hosted API's token is read from, first found wins
#: (the names the providers' own SDKs read). hf and tei read HF_TOKEN and the HF CLI's
#: token file; ollama and local read none.
TOKEN_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "cohere": ("COHERE_API_KEY", "CO_API_KEY"),
    "voyage": ("VOYAGE_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "ollama": (),
}


class Secret:
    """A token that never shows itself in `repr`, `str` or a traceback's locals display."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The token itself, for the Authorization header and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (Ray ships actor arguments pickled, and may keep them on disk), the token
        # is XORed with a random pad, so a dump or a grep of those bytes does not show it.
        # This hides it from accidents, not from someone who unpickles it.
        data = self._value.encode("utf-8")
        pad = secrets.token_bytes(len(data))
        return (_unmask, (bytes(a ^ b for a, b in zip(data, pad, strict=True)), pad))


def _unmask(masked: bytes, pad: bytes) -> Secret:
    return Secret(bytes(a ^ b for a, b in zip(masked, pad, strict=True)).decode("utf-8"))


def _hf_token_file() -> Path:
    explicit = os.environ.get("HF_TOKEN_PATH")
    if explicit:
        return Path(explicit)
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home) / "token"
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "huggingface" / "token"


def resolve_token(api: str, token: str | None) -> Secret | None:
    """The token to send: the argument, then the environment, then the HF CLI token file.

    `hf` and `tei` read `HF_TOKEN` (then the legacy `HUGGING_FACE_HUB_TOKEN`) and the file
    the huggingface CLI writes; the hosted APIs read the variables in `TOKEN_ENV`
    (`OPENAI_API_KEY`, `COHERE_API_KEY`, `VOYAGE_API_KEY`, `GEMINI_API_KEY`...); ollama none.
    """
    if token is not None:
        token = token.strip()
        return Secret(token) if token else None
    if api in TOKEN_ENV:
        for name in TOKEN_ENV[api]:
            value = os.environ.get(name, "").strip()
            if value:
                return Secret(value)
        return None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name, "").strip()
        if value:
            return Secret(value)
    try:
        value = _hf_token_file().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Secret(value) if value else None
