"""Scenario 'frameworks': `aembed_query` under N concurrent calls, through framework classes.

What a RAG web app does: many requests at once, each embedding one query through its
framework's embedding class. Every client gets the same N distinct texts (`asyncio.gather`)
and the same cost-model server as 'coalescing' (TEI wire format, `POST /embed`).

* `EmbedkitEmbedding.aget_query_embedding` (embedkit.llama_index) vs LlamaIndex's own
  `TextEmbeddingsInference` (llama-index-embeddings-text-embeddings-inference), which sends
  one request per call and opens a new `httpx.AsyncClient` for each.
* `EmbedkitEmbeddings.aembed_query` (embedkit.langchain) vs what langchain-huggingface's
  `HuggingFaceEndpointEmbeddings.aembed_query` does: one `AsyncInferenceClient.feature_extraction`
  per call. The class itself cannot be pointed at this server: it refuses a URL as `model`
  ("must be a HuggingFace repo ID, not a URL"), which is also why self-hosted TEI users cannot
  use it. So its row is that same call, made with huggingface_hub directly, to the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import Scenario, at_least, have, sentences, server
from ._measure import measure
from ._peers import TOKEN, Client, HfHubClient
from .coalescing import COST_MODEL

NAME = "frameworks"
TARGET = 10.0


class EmbedkitLlamaIndex(Client):
    """`EmbedkitEmbedding.aget_query_embedding(text)` per text, all gathered."""

    name = "embedkit.llama_index.EmbedkitEmbedding"

    def __init__(self, root: str) -> None:
        self.root = root

    async def __aenter__(self) -> EmbedkitLlamaIndex:
        from embedkit.llama_index import EmbedkitEmbedding

        self.model = EmbedkitEmbedding(api="tei", url=self.root, token=TOKEN)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.model.aclose()

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        rows = await asyncio.gather(*(self.model.aget_query_embedding(t) for t in texts))
        return np.asarray(rows, dtype=np.float32)


class LlamaIndexTEI(Client):
    """LlamaIndex's own `TextEmbeddingsInference.aget_query_embedding(text)` per text."""

    name = "llama-index TextEmbeddingsInference"

    def __init__(self, root: str) -> None:
        self.root = root

    async def __aenter__(self) -> LlamaIndexTEI:
        from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

        self.model = TextEmbeddingsInference(
            model_name="bench", base_url=self.root, auth_token=TOKEN, timeout=120.0
        )
        return self

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        rows = await asyncio.gather(*(self.model.aget_query_embedding(t) for t in texts))
        return np.asarray(rows, dtype=np.float32)


class EmbedkitLangChain(Client):
    """`EmbedkitEmbeddings.aembed_query(text)` per text, all gathered."""

    name = "embedkit.langchain.EmbedkitEmbeddings"

    def __init__(self, root: str) -> None:
        self.root = root

    async def __aenter__(self) -> EmbedkitLangChain:
        from embedkit.langchain import EmbedkitEmbeddings

        self.model = EmbedkitEmbeddings(api="tei", url=self.root, token=TOKEN)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.model.aclose()

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        rows = await asyncio.gather(*(self.model.aembed_query(t) for t in texts))
        return np.asarray(rows, dtype=np.float32)


class LangChainHfPattern(HfHubClient):
    """langchain-huggingface's `aembed_query`: `feature_extraction([text])[0]` per call."""

    name = "langchain-huggingface's call (hf_hub feature_extraction([text]) per query)"

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        async def one(text: str) -> np.ndarray:
            # langchain-huggingface: (await self.async_client.feature_extraction(text=[t]))[0]
            return np.asarray((await self.client.feature_extraction(text=[text]))[0])

        return np.stack(await asyncio.gather(*(one(t) for t in texts))).astype(np.float32)


def run(opts: Any) -> Scenario:
    n = 200 if opts.smoke else 1000
    texts = sentences(n, seed=7)
    scenario = Scenario(
        name=NAME,
        title=f"Frameworks: {n:,} concurrent aembed_query calls through framework classes",
        setup={"n": n, "server": dict(COST_MODEL), "dim": 384, "api": "tei (JSON)"},
        columns=["client", "texts/s", "× embedkit's gain", "requests", "mean batch"],
    )
    pairs: list[tuple[Any, Any]] = []
    with server(**COST_MODEL) as srv:
        root = srv.root
        llama = measure(lambda: EmbedkitLlamaIndex(root), texts, srv)
        opts.log(f"    {llama['client']}: {llama['texts_per_s']:,.0f} texts/s")
        llama_peer = measure(lambda: LlamaIndexTEI(root), texts, srv)
        opts.log(f"    {llama_peer['client']}: {llama_peer['texts_per_s']:,.0f} texts/s")
        pairs.append((llama, llama_peer))
        lang = measure(lambda: EmbedkitLangChain(root), texts, srv)
        opts.log(f"    {lang['client']}: {lang['texts_per_s']:,.0f} texts/s")
        lang_peer = None
        if have("huggingface_hub"):
            lang_peer = measure(lambda: LangChainHfPattern(srv.hf_url), texts, srv)
            opts.log(f"    {lang_peer['client']}: {lang_peer['texts_per_s']:,.0f} texts/s")
        pairs.append((lang, lang_peer))
    for ours, peer in pairs:
        ratio = ours["texts_per_s"] / peer["texts_per_s"] if peer else None
        for row in (ours, peer):
            if row is None:
                continue
            scenario.rows.append(
                {
                    "client": row["client"],
                    "texts/s": row["texts_per_s"],
                    "× embedkit's gain": f"{ratio:.1f}×" if row is ours and ratio else "—",
                    "requests": row.get("requests"),
                    "mean batch": row.get("mean_batch"),
                    "raw": row,
                }
            )
        scenario.checks.append(
            at_least(
                f"frameworks: {ours['client']} ÷ {peer['client'] if peer else 'its peer'}",
                ratio,
                TARGET,
                "×",
                note="" if peer else "huggingface_hub is not installed (embedkit[bench])",
            )
        )
    scenario.notes.append(
        "langchain-huggingface's HuggingFaceEndpointEmbeddings refuses a URL as its model "
        "(a repo id only), so it cannot be pointed at a self-hosted or loopback server; its row "
        "makes the exact call its aembed_query makes, with huggingface_hub, to this server."
    )
    scenario.notes.append(
        "The embedkit classes run their AsyncEmbedder on a loop thread of their own; every "
        "aembed_query crosses to it and back, and is still coalesced with the others."
    )
    return scenario
