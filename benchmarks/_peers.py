"""The clients under test: embedkit and the code people write without it.

Each client is an async context manager (opened and closed outside the timed region) with
`run(texts)` returning the (n, dim) float32 matrix, row i for text i, so every run is
checked, not only timed. All of them get the same dummy token, timeouts as generous as
embedkit's own (`PEER_TIMEOUT`) and one long-lived HTTP client each.

* `HfHubPerText` — huggingface_hub's `AsyncInferenceClient.feature_extraction`, one call per
  text under `asyncio.gather`, with or without a semaphore (llama-index's pattern).
* `HfHubBatched` — the same client fed pre-chunked lists under a semaphore.
* `HttpxPerText` — a plain httpx loop: one POST per text, `asyncio.gather`.
* `HttpxBatched` — the hand-tuned loop a careful user writes: a pre-chunked list, a
  semaphore, one `httpx.AsyncClient`, orjson + numpy decode, optional 429 handling.
* `EmbedkitEach` / `EmbedkitMany` / `EmbedkitStream` — `embed()` per text under gather,
  `embed_many()`, or `embed_stream()`.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import httpx
import numpy as np
import orjson

import embedkit

from ._common import PEER_TIMEOUT

TOKEN = "bench-token"
HEADERS = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}

Api = Literal["hf", "openai"]


class Client:
    """A client under test. `run(texts)` is what is timed."""

    name = "client"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    @property
    def rejected(self) -> int:
        """429s this client saw (for clients that count them)."""
        return 0


# ------------------------------------------------------------------------ huggingface_hub


def hf_hub_client(url: str) -> Any:
    """An `AsyncInferenceClient` pointed at `url` (a URL as `model` is used as is)."""
    from huggingface_hub import AsyncInferenceClient, constants

    # HF_HUB_OFFLINE (set in CI) makes huggingface_hub refuse every request, loopback
    # included; these peers only ever talk to the benchmark's own loopback servers.
    constants.HF_HUB_OFFLINE = False
    return AsyncInferenceClient(model=url, token=TOKEN)


def _hf_status(exc: BaseException) -> tuple[int | None, Any]:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None), response


class HfHubClient(Client):
    """A client that holds one `AsyncInferenceClient` (`hf_hub_client(url)`), opened and
    closed outside the timed region."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> HfHubClient:
        self.client = hf_hub_client(self.url)
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.__aexit__(*exc)


class HfHubPerText(HfHubClient):
    """One `feature_extraction(text)` per text, all gathered; at most `limit` in flight.

    With `retry_429`, a 429 is waited out as the server asked and retried (the user's own
    wrapper: huggingface_hub itself does not retry).
    """

    def __init__(self, url: str, *, limit: int | None, retry_429: bool = False) -> None:
        super().__init__(url)
        self.limit = limit
        self.retry_429 = retry_429
        self.name = (
            f"huggingface_hub, 1 text/call, gather + semaphore({limit})"
            if limit
            else "huggingface_hub, 1 text/call, gather (no limit)"
        )

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        client = self.client
        semaphore = asyncio.Semaphore(self.limit) if self.limit else None

        async def call(text: str) -> np.ndarray:
            while True:
                try:
                    return await client.feature_extraction(text)
                except Exception as exc:
                    status, response = _hf_status(exc)
                    if not (self.retry_429 and status == 429):
                        raise
                    await asyncio.sleep(retry_after(response.headers))

        async def one(text: str) -> np.ndarray:
            if semaphore is None:
                return await call(text)
            async with semaphore:
                return await call(text)

        rows = await asyncio.gather(*(one(t) for t in texts))
        return np.concatenate([r.reshape(1, -1) if r.ndim == 1 else r for r in rows])


class HfHubBatched(HfHubClient):
    """`feature_extraction(list_of_texts)` over pre-chunked batches, `concurrency` in flight."""

    def __init__(self, url: str, *, batch: int = 32, concurrency: int = 8) -> None:
        super().__init__(url)
        self.batch = batch
        self.concurrency = concurrency
        self.name = f"huggingface_hub, batches of {batch} by hand, semaphore({concurrency})"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(chunk: list[str]) -> np.ndarray:
            async with semaphore:
                return await self.client.feature_extraction(chunk)

        size = self.batch
        chunks = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
        return np.concatenate(await asyncio.gather(*(one(c) for c in chunks)))


# ---------------------------------------------------------------------------------- httpx


def body(api: Api, texts: list[str], encoding: str = "float", model: str = "bench") -> bytes:
    if api == "hf":
        return orjson.dumps({"inputs": texts})
    return orjson.dumps({"model": model, "input": texts, "encoding_format": encoding})


def decode(api: Api, content: bytes) -> np.ndarray:
    """What a careful user writes: orjson, then one numpy conversion (rows by `index`)."""
    parsed = orjson.loads(content)
    if api == "hf":
        return np.array(parsed, dtype=np.float32)
    data = sorted(parsed["data"], key=lambda item: item["index"])
    if isinstance(data[0]["embedding"], str):
        raw = b"".join(binascii.a2b_base64(item["embedding"]) for item in data)
        return np.frombuffer(raw, dtype="<f4").reshape(len(data), -1)
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def endpoint(api: Api, url: str) -> str:
    return url if api == "hf" else url.rstrip("/") + "/embeddings"


def retry_after(headers: Any) -> float:
    """The wait a 429 asks for: `retry-after-ms`, else `Retry-After` seconds, else 1 s."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / scale
            except ValueError:
                pass
    return 1.0


class HttpxPerText(Client):
    """A plain httpx loop: one POST per text, all gathered, httpx's default pool limits."""

    name = "httpx, 1 text/request, gather (no limit)"

    def __init__(self, url: str, *, api: Api = "hf") -> None:
        self.url = endpoint(api, url)
        self.api = api

    async def __aenter__(self) -> HttpxPerText:
        self.client = httpx.AsyncClient(timeout=PEER_TIMEOUT, headers=HEADERS)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        async def one(text: str) -> np.ndarray:
            response = await self.client.post(self.url, content=body(self.api, [text]))
            response.raise_for_status()
            return decode(self.api, response.content)

        return np.concatenate(await asyncio.gather(*(one(t) for t in texts)))


class HttpxPeer(Client):
    """A hand-written peer on one `httpx.AsyncClient` that counts the 429s it saw."""

    rejections = 0

    async def __aenter__(self) -> HttpxPeer:
        self.client = httpx.AsyncClient(timeout=PEER_TIMEOUT, headers=HEADERS)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()

    @property
    def rejected(self) -> int:
        return self.rejections


class HttpxBatched(HttpxPeer):
    """The hand-tuned loop: pre-chunked list, a semaphore, one client, rows into one matrix.

    With `retry_429`, a 429 is waited out (as long as the server asked) and retried, the way
    a careful user handles a rate limit without a library.
    """

    def __init__(
        self,
        url: str,
        *,
        batch: int = 32,
        concurrency: int = 8,
        api: Api = "hf",
        encoding: str = "float",
        model: str = "bench",
        retry_429: bool = False,
    ) -> None:
        self.url = endpoint(api, url)
        self.batch = batch
        self.concurrency = concurrency
        self.api = api
        self.encoding = encoding
        self.model = model
        self.retry_429 = retry_429
        fmt = "" if api == "hf" else f", {encoding}"
        self.name = f"httpx hand-batched loop ({batch} × {concurrency}{fmt})"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        semaphore = asyncio.Semaphore(self.concurrency)
        out: np.ndarray | None = None

        async def one(start: int) -> None:
            nonlocal out
            chunk = list(texts[start : start + self.batch])
            content = body(self.api, chunk, self.encoding, self.model)
            async with semaphore:
                while True:
                    response = await self.client.post(self.url, content=content)
                    if response.status_code == 429 and self.retry_429:
                        self.rejections += 1
                        await asyncio.sleep(retry_after(response.headers))
                        continue
                    response.raise_for_status()
                    break
            matrix = decode(self.api, response.content)
            if out is None:
                out = np.empty((len(texts), matrix.shape[1]), dtype=np.float32)
            out[start : start + len(chunk)] = matrix

        await asyncio.gather(*(one(i) for i in range(0, len(texts), self.batch)))
        assert out is not None
        return out


# ------------------------------------------------------------------------------- embedkit


def embedder(
    url: str, *, api: Api = "hf", model: str = "bench", **kwargs: Any
) -> embedkit.AsyncEmbedder:
    """An embedkit client at its defaults (batch 32, 64 for openai; concurrency 8) unless told."""
    if api == "hf":
        return embedkit.AsyncEmbedder(url=url, api="hf", token=TOKEN, **kwargs)
    return embedkit.AsyncEmbedder(model, url=url, api="openai", token=TOKEN, **kwargs)


class Embedkit(Client):
    """Base for the embedkit clients: one `AsyncEmbedder`, opened outside the timed region."""

    how = ""

    def __init__(
        self, url: str, *, api: Api = "hf", label: str = "", model: str = "bench", **kwargs: Any
    ) -> None:
        self.url = url
        self.api = api
        self.model = model
        self.kwargs = kwargs
        self.name = f"embedkit {self.how}" + (f" ({label})" if label else "")

    async def __aenter__(self) -> Embedkit:
        self.emb = embedder(self.url, api=self.api, model=self.model, **self.kwargs)
        await self.emb.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.emb.__aexit__(*exc)

    @property
    def rejected(self) -> int:
        return self.emb.stats().retries.get("429", 0)


class EmbedkitEach(Embedkit):
    """`await emb.embed(text)` once per text, all at once: a web app's concurrent calls."""

    how = "embed() per text, gather"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack(await asyncio.gather(*(self.emb.embed(t) for t in texts)))


class EmbedkitMany(Embedkit):
    """`await emb.embed_many(texts)`."""

    how = "embed_many()"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        return await self.emb.embed_many(list(texts))


class EmbedkitStream(Embedkit):
    """`async for start, block in emb.embed_stream(texts)`, blocks copied into one matrix."""

    how = "embed_stream()"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray | None = None
        async for start, block in self.emb.embed_stream(texts):
            if out is None:
                out = np.empty((len(texts), block.shape[1]), dtype=np.float32)
            out[start : start + block.shape[0]] = block
        assert out is not None
        return out


def has_stream() -> bool:
    """Whether this embedkit has `embed_stream` (it landed after the first benchmarks)."""
    return hasattr(embedkit.AsyncEmbedder, "embed_stream")
