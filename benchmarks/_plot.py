"""One PNG with a panel per scenario, drawn from results.json (matplotlib, Agg backend)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

EMBEDKIT = "#2f6db3"
PEER = "#9aa5b1"
MISS = "#c0392b"


def _label(text: str, width: int = 44) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _colour(name: str) -> str:
    return EMBEDKIT if name.startswith("embedkit") else PEER


def _barh(ax: Any, labels: list[str], values: list[float], *, fmt: str = "{:,.0f}") -> None:
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=[_colour(lbl) for lbl in labels])
    ax.set_yticks(y, [_label(lbl) for lbl in labels], fontsize=7)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, " " + fmt.format(v), va="center", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.margins(x=0.25)


def _layers(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Stacked bars: each layer's own share of embedkit's CPU per text, JSON and base64."""
    colours = ["#1b4f8a", "#5b8fd0", "#9ec1ec", "#f0a35e"]
    paths = ["JSON", "base64"]
    for y, path in enumerate(paths):
        own = [r for r in rows if r["path"] == path]
        left = 0.0
        for i, r in enumerate(own):
            width = max(0.0, r["CPU µs/text"] - left)
            name = r["client"].split(". ", 1)[-1].removeprefix("+ ")
            ax.barh(y, width, left=left, color=colours[i % 4], label=name if y == 0 else None)
            if width > 1.5:
                ax.text(left + width / 2, y, f"{width:.1f}", ha="center", va="center", fontsize=7)
            left = max(left, r["CPU µs/text"])
        ax.text(left, y, f" {left:.1f} µs/text", va="center", fontsize=7)
    alone = next((r for r in rows if r["path"] == "any"), None)
    ax.set_yticks(range(len(paths)), paths, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.legend(fontsize=6.5, loc="lower right")
    ax.tick_params(axis="x", labelsize=7)
    note = f"; scheduler alone (no HTTP): {alone['CPU µs/text']:.1f} µs/text" if alone else ""
    ax.set_xlabel("CPU µs per text, each layer's own share (bottom layer first)" + note, fontsize=7)
    ax.set_title("Where embedkit's client CPU goes (layers measured one at a time)", fontsize=9)


def _openloop(ax: Any, ax2: Any, s: dict[str, Any]) -> None:
    """Latency against offered load (log y), and achieved against offered throughput."""
    clients: dict[str, list[dict[str, Any]]] = {}
    for r in s["rows"]:
        clients.setdefault(r["client"], []).append(r["raw"])
    markers = iter("osd^v<>")
    peers = iter(["#7f7f7f", "#e67e22", "#27ae60", "#8e44ad", "#d4ac0d"])
    for name, runs in clients.items():
        colour = EMBEDKIT if name.startswith("embedkit") else next(peers, PEER)
        x = [100 * r["load"] for r in runs]
        marker = next(markers, "o")
        (line,) = ax.plot(x, [r["p99_ms"] for r in runs], marker=marker, color=colour, label=name)
        ax.plot(x, [r["p50_ms"] for r in runs], ls="--", marker=marker, color=line.get_color())
        behind = [r for r in runs if r["achieved_per_s"] < 0.97 * r["offered_per_s"]]
        ax.scatter(
            [100 * r["load"] for r in behind],
            [r["p99_ms"] for r in behind],
            s=90,
            facecolors="none",
            edgecolors=MISS,
        )
        ax2.plot(
            x,
            [100 * r["achieved_per_s"] / r["offered_per_s"] for r in runs],
            marker=marker,
            color=line.get_color(),
            label=name,
        )
    service = s["setup"]["service_ms"]
    ax.axhline(service["batch_1"], color="k", ls=":", lw=0.8)
    ax.axhline(3 * service["batch_32"], color=MISS, ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(
        "offered load, % of capacity at batch 32; solid p99, dashed p50; red ring: fell behind; "
        "dotted: one-text service time, 3× batch-32 service time",
        fontsize=6.5,
    )
    ax.set_ylabel("ms from arrival to row (log)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5)
    ax.set_title(s["title"] + ": latency against load", fontsize=9)
    ax2.axhline(97, color=MISS, ls=":", lw=0.8)
    ax2.set_xlabel("offered load, % of capacity at batch 32; dotted: 97%", fontsize=7)
    ax2.set_ylabel("achieved, % of offered", fontsize=7)
    ax2.tick_params(labelsize=7)
    ax2.set_title("Open loop: who keeps up", fontsize=9)


def _scenario(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in report["scenarios"] if s["name"] == name and s["rows"]), None)


def _empty(ax: Any, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_axis_off()


def plot(report: dict[str, Any], path: Path) -> None:
    fig = plt.figure(figsize=(14, 28))
    grid = fig.add_gridspec(7, 2, height_ratios=[1, 1, 1, 1, 1, 1, 0.45])
    panels = iter([fig.add_subplot(grid[r, c]) for r in range(6) for c in range(2)])

    ax = next(panels)
    s = _scenario(report, "coalescing")
    if s:
        caps = s["setup"]["capacity_texts_per_s"]
        _barh(ax, [r["client"] for r in s["rows"]], [r["texts/s"] for r in s["rows"]])
        ax.set_xscale("log")
        ax.axvline(caps["batch_32"], color="k", ls="--", lw=0.8)
        ax.axvline(caps["batch_1"], color="k", ls=":", lw=0.8)
        ax.set_xlabel(
            "texts/s (log); dashed: capacity at 32 texts/request, dotted: at 1", fontsize=7
        )
        ax.set_title(s["title"], fontsize=9)
    else:
        _empty(ax, "Coalescing", "not run")

    s = _scenario(report, "bulk")
    ax = next(panels)
    if s:
        rows = [r for r in s["rows"] if r["server"] == "cost model"]
        _barh(ax, [r["client"] for r in rows], [r["texts/s"] for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("texts/s (log), cost-model server", fontsize=7)
        ax.set_title(s["title"] + ", cost-model server", fontsize=9)
    else:
        _empty(ax, "Bulk", "not run")
    ax = next(panels)
    real = [r for r in s["rows"] if r["server"] != "cost model"] if s else []
    if real:
        _barh(ax, [f"{r['client']} — {r['server']}" for r in real], [r["texts/s"] for r in real])
        ax.set_xlabel("texts/s on real model servers (CPU)", fontsize=7)
        ax.set_title(
            "Bulk, real model servers: embedkit defaults vs the best hand-tuned loop", fontsize=9
        )
    else:
        _empty(ax, "Bulk, real model servers", "not run (smoke run without --real, or no server)")

    ax = next(panels)
    s = _scenario(report, "overhead")
    if s:
        rows = [
            r
            for r in s["rows"]
            if not r["client"].startswith(("layer", "reference")) and "CPU µs/text" in r
        ]
        labels = [f"{r['client']} [{r['path']}]" for r in rows]
        _barh(ax, labels, [r["CPU µs/text"] for r in rows], fmt="{:.1f}")
        floor = s["setup"].get("floor_us_per_text", {})
        if floor:
            ax.axvline(1.3 * floor["JSON"], color=MISS, ls="--", lw=0.8)
            ax.axvline(2.0 * floor["base64"], color=MISS, ls=":", lw=0.8)
        ax.set_xlabel(
            "client CPU µs per text; targets: 1.3× the JSON floor (dashed), 2× the base64 "
            "floor (dotted)",
            fontsize=7,
        )
        ax.set_title(
            "Client overhead: CPU µs per text (batch 32, dim 384, instant server)", fontsize=9
        )
    else:
        _empty(ax, "Client overhead", "not run")

    ax = next(panels)
    layers = (
        [r for r in s["rows"] if r["client"].startswith("layer") and "CPU µs/text" in r]
        if s
        else []
    )
    if layers:
        _layers(ax, layers)
    else:
        _empty(ax, "Where embedkit's client CPU goes", "not measured")

    ax = next(panels)
    s = _scenario(report, "latency")
    if s:
        rows = s["rows"]
        labels = [r["client"] for r in rows]
        y = list(range(len(rows)))[::-1]
        ax.barh(
            [v + 0.2 for v in y],
            [r["p50 ms"] for r in rows],
            height=0.4,
            color=EMBEDKIT,
            label="p50",
        )
        ax.barh(
            [v - 0.2 for v in y], [r["p99 ms"] for r in rows], height=0.4, color=PEER, label="p99"
        )
        ax.set_yticks(y, [_label(lbl) for lbl in labels], fontsize=7)
        for v, r in zip(y, rows, strict=True):
            ax.text(r["p50 ms"], v + 0.2, f" {r['p50 ms']:.3f}", va="center", fontsize=7)
            ax.text(r["p99 ms"], v - 0.2, f" {r['p99 ms']:.3f}", va="center", fontsize=7)
        ax.margins(x=0.25)
        ax.legend(fontsize=7)
        ax.set_xlabel("ms per call, idle client, instant server", fontsize=7)
        ax.set_title(s["title"], fontsize=9)
    else:
        _empty(ax, "Latency", "not run")

    ax = next(panels)
    s = _scenario(report, "ratelimit")
    if s:
        rows = s["rows"]
        labels = [r["client"] for r in rows]
        share = [r["raw"]["rate_share"] for r in rows]
        rejected = [r["raw"]["share_429"] for r in rows]
        y = list(range(len(rows)))[::-1]
        ax.barh([v + 0.2 for v in y], share, height=0.4, color=EMBEDKIT, label="% of R achieved")
        ax.barh(
            [v - 0.2 for v in y],
            rejected,
            height=0.4,
            color=MISS,
            label="% of requests answered 429",
        )
        for v, a, b in zip(y, share, rejected, strict=True):
            ax.text(a, v + 0.2, f" {a:.0f}%", va="center", fontsize=7)
            ax.text(b, v - 0.2, f" {b:.1f}%", va="center", fontsize=7)
        ax.set_yticks(y, [_label(lbl) for lbl in labels], fontsize=7)
        ax.axvline(95, color="k", ls="--", lw=0.8)
        ax.margins(x=0.2)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2)
        ax.set_title(s["title"], fontsize=9)
    else:
        _empty(ax, "Rate-limited", "not run")

    ax = next(panels)
    s = _scenario(report, "memory")
    if s:
        r = s["rows"][0]
        labels = ["RSS after imports", "peak RSS", "output file (on disk)"]
        values = [r["RSS after imports MB"], r["peak RSS MB"], r["output MB"]]
        ax.bar(labels[:2], values[:2], color=[PEER, EMBEDKIT])
        for i, v in enumerate(values[:2]):
            ax.text(i, v, f"{v:,.0f} MB", ha="center", va="bottom", fontsize=8)
        ax.axhline(200, color=MISS, ls="--", lw=0.8)
        ax.set_ylim(0, 230)
        ax.set_ylabel("MB", fontsize=7)
        ax.set_xlabel(f"output file on disk: {values[2]:,.0f} MB (not in memory)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"Memory: embed_stream of {r['texts']:,} texts → .npy; target ≤ 200 MB peak", fontsize=9
        )
    else:
        _empty(ax, "Memory", "not run")

    s = _scenario(report, "openloop")
    if s:
        _openloop(next(panels), next(panels), s)
    else:
        _empty(next(panels), "Open loop", "not run")
        _empty(next(panels), "Open loop", "not run")

    ax = next(panels)
    s = _scenario(report, "replicas")
    if s:
        rows = [r for r in s["rows"] if "killed" not in r["client"]]
        labels = [r["client"].replace("embedkit embed_many() ", "embedkit ") for r in rows]
        _barh(ax, labels, [r["texts/s"] for r in rows])
        total = s["setup"].get("sum_of_singles")
        if total:
            ax.axvline(total, color="k", ls="--", lw=0.8)
            ax.text(total, -0.9, " sum of singles", fontsize=7, va="center")
        killed = [r for r in s["rows"] if "killed" in r["client"]]
        lost = ", ".join(
            f"{r['client'].split(' (')[0].replace('embedkit embed_many()', 'embedkit')}"
            f"{' via nginx' if 'nginx' in r['client'] else ''}: {r['failed texts']} lost"
            for r in killed
        )
        ax.set_xlabel(
            "texts/s" + (f"; a replica killed mid-run: {lost}" if lost else ""), fontsize=7
        )
        ax.set_title(s["title"], fontsize=9)
    else:
        _empty(ax, "Replicas", "not run")
    for ax in panels:
        ax.set_axis_off()

    ax = fig.add_subplot(grid[6, :])
    checks = [c for sc in report["scenarios"] for c in sc["checks"]]
    ax.set_axis_off()
    ax.set_title("Targets", fontsize=9)
    lines = []
    for c in checks:
        value = "—" if c["measured"] is None else f"{c['measured']:.3g} {c['unit']}"
        lines.append(f"{c['verdict']:4}  {c['name']:<72} {c['target']:>15}   measured {value}")
    ax.text(
        0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8, transform=ax.transAxes
    )

    m = report["machine"]
    fig.suptitle(
        f"embedkit benchmarks — {m.get('cores')} cores, {m.get('cpu')}, Python {m.get('python')} — "
        f"`{report['command']}`",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
