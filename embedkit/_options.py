"""The option list of an embedder, written once, and the flat keywords it replaced.

`EmbedderOptions` is what `AsyncEmbedder`, `Embedder`, `embed_file`, the framework classes
and `embed_dataset` take as keywords (`**options: Unpack[EmbedderOptions]` where they pass
them on); a test keeps it in step with `AsyncEmbedder.__init__`. The HTTP settings and the
limits that used to be flat keywords are value objects now (`Connection`, `Limits`); the
flat spellings still work for one release, with a `DeprecationWarning` that names the new
one (`fold_legacy`).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Literal, TypedDict

import httpx

from ._backends import Backend, URLs
from ._cache import EmbeddingCache
from ._config import (
    CONNECTION_FIELDS,
    LIMITS_FIELDS,
    Api,
    CertTypes,
    Connection,
    Dtype,
    Kind,
    Limits,
    Pooling,
    VerifyTypes,
)
from ._core import (
    AskTokens,
    Overflow,
    Quota,
    RetryPolicy,
    TokenBook,
    TokenCounting,
    book_for,
)

__all__ = ["AnyOptions", "EmbedderOptions", "LegacyOptions", "fold_legacy", "token_options"]


class EmbedderOptions(TypedDict, total=False):
    """`AsyncEmbedder`'s keyword arguments: what `embed_file(..., **options)` accepts."""

    model: str | None
    url: URLs | None
    api: Api
    token: str | None
    normalize: bool | None
    prompt_name: str | None
    truncate: bool | None
    truncation_direction: Literal["left", "right"] | None
    dimensions: int | None
    pooling: Pooling | None
    device: str | None
    limits: Limits | None
    connection: Connection | None
    retry: RetryPolicy | None
    quota: Quota | None
    cache_size: int
    cache: EmbeddingCache | None
    backend: Backend | None
    on_overflow: Overflow
    count_tokens: TokenCounting
    kind: Kind | None
    dtype: Dtype


class LegacyOptions(TypedDict, total=False):
    """The flat keywords `Limits` and `Connection` replaced (deprecated; one release)."""

    max_batch_size: int | None
    max_batch_chars: int | None
    max_concurrency: int
    adaptive_concurrency: bool
    requests_per_second: float | None
    inputs_per_second: float | None
    dedup: bool
    timeout: httpx.Timeout | float | None
    verify: VerifyTypes
    cert: CertTypes | None
    http2: bool
    max_response_size: int | None
    transport: httpx.AsyncBaseTransport | None
    http_client: httpx.AsyncClient | None
    encoding_format: Literal["base64", "float"]
    wait_for_model: bool | None
    use_cache: bool | None


class AnyOptions(EmbedderOptions, LegacyOptions, total=False):
    """Both: what the pass-through entry points accept at run time."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The stack level of the first frame outside embedkit (so the warning points there)."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def fold_legacy(
    limits: Limits | None, connection: Connection | None, legacy: dict[str, Any]
) -> tuple[Limits, Connection]:
    """`limits` and `connection` with any deprecated flat keywords folded in.

    Each flat keyword warns once per call, naming its new home. Giving the same setting
    both ways (`limits=` and a flat `max_concurrency=`) is a `TypeError`.
    """
    unknown = set(legacy) - LIMITS_FIELDS - CONNECTION_FIELDS
    if unknown:
        raise TypeError(
            f"unexpected keyword argument{'s' if len(unknown) > 1 else ''}: "
            + ", ".join(sorted(unknown))
        )
    built: dict[str, Any] = {}
    for name, cls, fields, given in (
        ("limits", Limits, LIMITS_FIELDS, limits),
        ("connection", Connection, CONNECTION_FIELDS, connection),
    ):
        flat = {k: v for k, v in legacy.items() if k in fields}
        if not flat:
            built[name] = given if given is not None else cls()
            continue
        keywords = ", ".join(f"{k}=" for k in sorted(flat))
        if given is not None:
            raise TypeError(
                f"{keywords} and {name}= were both given; "
                f"set {'them' if len(flat) > 1 else 'it'} on the {cls.__name__} only"
            )
        spelled = ", ".join(f"{k}=..." for k in sorted(flat))
        warnings.warn(
            f"{keywords} as flat keyword{'s are' if len(flat) > 1 else ' is'} deprecated; "
            f"pass {name}=embedkit.{cls.__name__}({spelled})",
            DeprecationWarning,
            stacklevel=_caller_stacklevel(),
        )
        built[name] = cls(**flat)
    return built["limits"], built["connection"]


def open_book(book: TokenBook, max_input_tokens: int | None, backend: Backend) -> None:
    """What an opened server tells the token book: its input cap (TEI's `max_input_length`)
    unless one was given, and, for `count_tokens="server"`, its `/tokenize` (one TEI URL)."""
    if book.max_per_input is None:
        book.max_per_input = max_input_tokens
    if book.wants_server:
        ask: AskTokens | None = getattr(backend, "tokenize", None)
        if ask is None:
            raise ValueError("count_tokens='server' needs one TEI url (it asks its /tokenize)")
        book.ask = ask


def token_options(
    api: str,
    limits: Limits,
    count_tokens: TokenCounting,
    on_overflow: Overflow,
    truncate: bool | None,
) -> tuple[TokenBook | None, bool | None]:
    """The `TokenBook` the token options ask for (None: `count_tokens=False`), and `truncate`
    as sent: `on_overflow="truncate"` lets TEI and HF cut at their own limit, exactly."""
    if count_tokens == "server" and api != "tei":
        raise ValueError("count_tokens='server' asks TEI's /tokenize: it needs api='tei'")
    if on_overflow == "truncate" and truncate is None and api in ("tei", "hf"):
        truncate = True
    book = book_for(
        count_tokens,
        max_per_request=limits.tokens_per_request_for(api),
        max_per_input=limits.max_tokens_per_input,
        on_overflow=on_overflow,
        server_truncates=bool(truncate) and api in ("tei", "hf"),
        refuse_blank=api == "openai",
    )
    return book, truncate
