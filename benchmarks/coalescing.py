"""Scenario 1, coalescing: N concurrent single-text calls, as a web app makes them.

Every client gets the same N distinct texts at once (`asyncio.gather`) and the same
cost-model server (`COST_MODEL`). embedkit is called one text per `embed()`, exactly like the
per-text peers; the hand-batched loop is given the whole list up front, which a web app does
not have: that is the best case for hand batching, not a realistic one.
"""

from __future__ import annotations

from typing import Any

from ._common import Scenario, at_least, sentences, server
from ._measure import head_to_head, measure
from ._peers import EmbedkitEach, HfHubPerText, HttpxBatched, HttpxPerText

NAME = "coalescing"

#: A small GPU embedding service one network hop away: 10 ms per request (round trip,
#: routing, tokenizer, kernel launch), 0.05 ms per short text, 4 requests served at once.
COST_MODEL = {"latency_ms": 10.0, "per_text_ms": 0.05, "slots": 4}

#: embedkit ÷ huggingface_hub, as a share of the most any client can reach on this server:
#: capacity(32) ÷ capacity(1) (a slot-bound server caps the ratio below 32×).
TARGET_SHARE_OF_CEILING = 0.90
TARGET_VS_HAND = 1.0
TARGET_CAPACITY_SHARE = 0.95


def run(opts: Any) -> Scenario:
    n = opts.n or (300 if opts.smoke else 4000)
    rounds = 1 if opts.smoke else 3
    texts = sentences(n, seed=1)
    scenario = Scenario(
        name=NAME,
        title=f"Coalescing: {n:,} concurrent single-text calls",
        setup={
            "n": n,
            "server": dict(COST_MODEL),
            "dim": 384,
            "api": "hf (JSON)",
            "rounds": rounds,
        },
        columns=[
            "client",
            "texts/s",
            "× vs embedkit",
            "requests",
            "mean batch",
            "% capacity(32)",
            "slot use",
            "1st request ms",
        ],
    )
    with server(**COST_MODEL) as srv:
        cap1, cap32 = srv.capacity(1), srv.capacity(32)
        assert cap1 is not None
        assert cap32 is not None
        scenario.setup["capacity_texts_per_s"] = {"batch_1": cap1, "batch_32": cap32}
        scenario.notes.append(
            f"Server cost model: {COST_MODEL['latency_ms']:g} ms + "
            f"{COST_MODEL['per_text_ms']:g} ms/text per request, {COST_MODEL['slots']} slots. "
            f"Theoretical capacity: {cap1:,.0f} texts/s at 1 text/request, {cap32:,.0f} texts/s "
            f"at 32 texts/request, so no client can beat one-text-per-request by more than "
            f"{cap32 / cap1:.1f}× on server time alone."
        )
        url = srv.hf_url
        opts.log("  embedkit vs the hand-batched loop (alternating rounds)")
        fast = head_to_head(
            [lambda: EmbedkitEach(url), lambda: HttpxBatched(url, batch=32, concurrency=8)],
            texts,
            srv,
            rounds=rounds,
            log=opts.log,
        )
        slow = []
        for make in (
            lambda: HfHubPerText(url, limit=8),
            lambda: HfHubPerText(url, limit=None),
            lambda: HttpxPerText(url),
        ):
            if "huggingface_hub" in make().name and not opts.have_hf_hub:
                continue
            result = measure(make, texts, srv)
            opts.log(f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s")
            slow.append(result)
    rows = fast + slow
    ours = fast[0]["texts_per_s"]
    for row in rows:
        row["capacity_share"] = row["texts_per_s"] / cap32
        row["ratio"] = ours / row["texts_per_s"]
        scenario.rows.append(
            {
                "client": row["client"],
                "texts/s": row["texts_per_s"],
                "× vs embedkit": "—" if row is fast[0] else f"{row['ratio']:.2f}×",
                "requests": row.get("requests"),
                "mean batch": row.get("mean_batch"),
                "% capacity(32)": f"{100 * row['capacity_share']:.0f}%",
                "slot use": f"{100 * row.get('slot_utilization', 0):.0f}%",
                "1st request ms": row.get("first_request_after_ms"),
                "raw": row,
            }
        )
    scenario.notes.append(
        "'1st request ms': from the moment the client is handed its N texts to the first request "
        "reaching the server. All N `embed()` calls start at once, and asyncio runs every call's "
        "first step (task creation, queueing the text) before embedkit's dispatcher wakes up; "
        "the hand-batched loop is given the ready-made list and sends at once."
    )
    hf_rows = [r for r in slow if r["client"].startswith("huggingface_hub")]
    best_hf = max(hf_rows, key=lambda r: r["texts_per_s"]) if hf_rows else None
    ceiling = cap32 / cap1
    scenario.checks.append(
        at_least(
            "coalescing: embedkit ÷ best huggingface_hub, share of the ceiling cap(32)/cap(1)",
            100 * ours / best_hf["texts_per_s"] / ceiling if best_hf else None,
            100 * TARGET_SHARE_OF_CEILING,
            "%",
            note=f"against '{best_hf['client']}': {ours / best_hf['texts_per_s']:.1f}× of a "
            f"{ceiling:.1f}× ceiling (the cost model's capacity at 32 texts/request over 1)"
            if best_hf
            else "huggingface_hub is not installed (pip install embedkit[bench])",
        )
    )
    scenario.checks.append(
        at_least(
            "coalescing: embedkit share of capacity at batch 32",
            100 * ours / cap32,
            100 * TARGET_CAPACITY_SHARE,
            "%",
        )
    )
    scenario.checks.append(
        at_least(
            "coalescing: embedkit ÷ hand-batched httpx loop (32 × 8)",
            ours / fast[1]["texts_per_s"],
            TARGET_VS_HAND,
            "×",
        )
    )
    return scenario
