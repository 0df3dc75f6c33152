"""What decides the vectors an embedder gives, as one plain dict.

`embed_file` stores it as the resume fingerprint (a run resumed with other settings would mix
two kinds of vectors in one file) and the persistent cache hashes it into every key (two
embedders share an entry only when they would give the same vector). A field joins the dict
only when set, so the fingerprints of earlier runs still match after a field is added.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._backends import Options, URLs, endpoints_of

__all__ = ["identity_of"]


def _set_only(**fields: Any) -> dict[str, Any]:
    """The fields that are not None (so an identity without them stays what it was)."""
    return {name: value for name, value in fields.items() if value is not None}


def identity_of(
    *,
    api: str,
    model: str | None,
    url: URLs | None,
    options: Options,
    dtype: str,
    encoding_format: str | None,
    backend: str | None,
) -> dict[str, Any]:
    """The identity of an embedder with these settings. The URL may carry credentials, so
    only a hash of it is kept; `encoding_format` is given only where it changes the vectors
    (openai's "float"); `backend` names a custom backend's class."""
    if url is not None and not isinstance(url, str):
        url = " ".join(e.url for e in endpoints_of(url))
    return {
        "api": api,
        "model": model,
        "url_sha256": hashlib.sha256(url.encode()).hexdigest()[:16] if url else None,
        "normalize": options.normalize,
        "prompt_name": options.prompt_name,
        "dimensions": options.dimensions,
        "truncate": options.truncate,
        **({"kind": options.kind} if options.kind is not None else {}),
        **({"dtype": dtype} if dtype != "float32" else {}),
        **_set_only(
            truncation_direction=options.truncation_direction,
            pooling=options.pooling,
            encoding_format=encoding_format,
            backend=backend,
        ),
    }
