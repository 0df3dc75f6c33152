"""The cache key: what decides a vector, hashed with the text.

A cached vector may only answer a text when the same model, asked the same way, would give
the same vector. So the key hashes every field of `AsyncEmbedder.identity()` (the one place
that lists what decides a vector: protocol, model, the options that change a vector, the
dtype) and then the text. Each field goes in as a length-prefixed name and value, and the
text as a length-prefixed UTF-8 string, so no two different inputs can be joined into the
same bytes (the "keys built by joining inputs" bug of other caches). blake2b-256 is fast
(about a microsecond a text here) and has no known collisions.

The endpoint's URL is part of the key only when no model is named: then the server decides
the model, and its URL is all that names it. With a model named, replicas of it (several
URLs, other hosts) share their vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

__all__ = ["KEY_VERSION", "KeyMaker", "key_identity"]

#: Bumped when the key's layout or the stored value's format changes: old entries then miss.
KEY_VERSION = 1


def key_identity(identity: Mapping[str, object]) -> dict[str, object]:
    """The fields of an embedder's `identity()` that go into its cache keys."""
    fields = dict(identity)
    if fields.get("model") is not None:
        fields.pop("url_sha256", None)  # replicas of a named model share their vectors
    fields["key_version"] = KEY_VERSION
    return fields


def _field(digest: hashlib.blake2b, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


class KeyMaker:
    """Keys for one identity: `maker.key(text)` is a 64-character hex string.

    The identity is hashed once; each key copies that state and adds the text.
    """

    __slots__ = ("_base",)

    def __init__(self, identity: Mapping[str, object]) -> None:
        base = hashlib.blake2b(digest_size=32, person=b"embedkit-cache")
        fields = key_identity(identity)
        _field(base, str(len(fields)).encode())
        for name in sorted(fields):
            _field(base, name.encode())
            _field(base, json.dumps(fields[name], sort_keys=True, default=str).encode())
        self._base = base

    def key(self, text: str) -> str:
        """The key of `text` under this identity."""
        digest = self._base.copy()
        _field(digest, text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def keys(self, texts: Sequence[str]) -> list[str]:
        """`key(text)` for each text."""
        base = self._base
        out = []
        for text in texts:
            digest = base.copy()
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
            out.append(digest.hexdigest())
        return out
