"""Scenario 6, rate-limited: a server that admits R requests/s and answers 429 beyond.

The server's token bucket refills at R/s and holds R/10 tokens; a request without a token
gets 429 at once with `Retry-After` (whole seconds) and `retry-after-ms` (exact), as OpenAI
sends them. Admitted requests then pay the usual cost model (8 slots, so the rate, not the
slots, is the limit). Each client gets a corpus that takes about `seconds` at R requests/s.

* embedkit told the rate (`requests_per_second=R`): a feature the peers do not have.
* embedkit not told (its default): it learns from the 429s (cooldown, AIMD concurrency).
* the hand-batched loop (32 × 8) that sleeps as long as each 429 asks, then retries.
* huggingface_hub, one text per call, semaphore(8), with the same user-written 429 retry
  (the library itself does not retry).
"""

from __future__ import annotations

from typing import Any

import embedkit

from ._common import Scenario, at_least, at_most, sentences, server
from ._measure import measure
from ._peers import EmbedkitMany, HfHubPerText, HttpxBatched

NAME = "ratelimit"
TARGET_RATE_SHARE = 95.0
TARGET_429_SHARE = 5.0


def run(opts: Any) -> Scenario:
    rate = 50.0
    seconds = 3.0 if opts.smoke else 10.0
    server_options = {
        "latency_ms": 10.0,
        "per_text_ms": 0.05,
        "slots": 8,
        "rate": rate,
        "burst": rate / 10,
    }
    scenario = Scenario(
        name=NAME,
        title=f"Rate-limited: server admits R = {rate:g} requests/s (429 beyond), "
        f"~{seconds:g} s a client",
        setup={"rate": rate, "seconds": seconds, "server": server_options},
        columns=["client", "ok req/s", "% of R", "429 share", "requests", "texts/s"],
    )
    n_batched = int(rate * seconds * 32)
    n_single = int(rate * seconds)
    corpus = sentences(n_batched, seed=6)
    with server(**server_options) as srv:
        url = srv.hf_url
        clients: list[tuple[Any, int]] = [
            (
                lambda: EmbedkitMany(
                    url,
                    label=f"requests_per_second={rate:g}",
                    limits=embedkit.Limits(requests_per_second=rate),
                ),
                n_batched,
            ),
            (lambda: EmbedkitMany(url, label="no rate given: learns from 429s"), n_batched),
            (lambda: HttpxBatched(url, retry_429=True), n_batched),
        ]
        if opts.have_hf_hub:
            clients.append((lambda: HfHubPerText(url, limit=8, retry_429=True), n_single))
        results = []
        for make, n in clients:
            result = measure(make, corpus[:n], srv)
            ok_rate = result["ok_requests"] / result["seconds"]
            result["ok_requests_per_s"] = ok_rate
            result["rate_share"] = 100 * ok_rate / rate
            result["share_429"] = 100 * result["rejected_429"] / max(1, result["requests"])
            opts.log(
                f"    {result['client']}: {ok_rate:.1f} ok req/s "
                f"({result['rate_share']:.0f}% of R), {result['share_429']:.1f}% 429"
            )
            results.append(result)
            scenario.rows.append(
                {
                    "client": result["client"],
                    "ok req/s": ok_rate,
                    "% of R": f"{result['rate_share']:.0f}%",
                    "429 share": f"{result['share_429']:.1f}%",
                    "requests": result["requests"],
                    "texts/s": result["texts_per_s"],
                    "raw": result,
                }
            )
    told, learning = results[0], results[1]
    scenario.notes.append(
        "The first row uses a setting only embedkit has (a client-side request rate); the others "
        "run at their defaults. % of R can exceed 100% by the server's initial burst (R/10)."
    )
    for label, row in (("told R", told), ("learning from 429s", learning)):
        scenario.checks.append(
            at_least(
                f"rate-limited: embedkit {label}, achieved share of R",
                row["rate_share"],
                TARGET_RATE_SHARE,
                "%",
            )
        )
        scenario.checks.append(
            at_most(
                f"rate-limited: embedkit {label}, requests answered 429",
                row["share_429"],
                TARGET_429_SHARE,
                "%",
            )
        )
    return scenario
