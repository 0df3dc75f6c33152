"""The one check every text passes before anything is sent: `check_text`.

A text is embeddable when it is a non-empty `str` that can be encoded as UTF-8 (a lone
surrogate such as `"a\\ud800b"` cannot: no server could receive it). `embed`, `embed_many`,
`embed_stream`, `encode` and `embed_file` all use these functions, so the same bad text
gets the same error, naming its position, wherever it is passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_text", "check_texts", "first_bad", "problem"]


def problem(text: object) -> tuple[type[Exception], str] | None:
    """What is wrong with `text` as an input (None: nothing): the error class and why."""
    if not isinstance(text, str):
        return TypeError, f"is {type(text).__name__}, expected str"
    if not text:
        return ValueError, "is an empty string; embedding servers reject empty inputs"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return ValueError, (
                f"has a lone surrogate {text[exc.start]!r} at character {exc.start}: it is not "
                "valid Unicode and cannot be sent as UTF-8 (decode with errors='replace', "
                "or fix the source)"
            )
    return None


def check_text(text: Any, name: str = "text") -> str:
    """`text` as a plain `str`, or the `TypeError`/`ValueError` that names what is wrong."""
    found = problem(text)
    if found is not None:
        raise found[0](f"{name} {found[1]}")
    return text if type(text) is str else str(text)


def first_bad(
    texts: list[Any], start: int = 0, name: str = "texts"
) -> tuple[int, Exception] | None:
    """The position of the first text `check_text` refuses in `texts`, and its error.

    The error names the text as `name[start + position]`.
    """
    for k, text in enumerate(texts):
        if type(text) is str and text.isascii() and text:
            continue  # the common case, without a call
        found = problem(text)
        if found is not None:
            return k, found[0](f"{name}[{start + k}] {found[1]}")
    return None


def check_texts(texts: Iterable[Any], name: str = "texts") -> list[str]:
    """Every text checked (see `check_text`); a lone `str` or `bytes` is refused as a whole."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{name} must be an iterable of strings, not a single {type(texts).__name__} "
            "(iterating it would embed one character at a time)"
        )
    items = texts if isinstance(texts, list) else list(texts)
    bad = first_bad(items, 0, name)
    if bad is not None:
        raise bad[1]
    return items
