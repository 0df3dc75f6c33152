"""results.json → Markdown tables (results.md), for docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from ._common import _cell


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append(
        "|"
        + "|".join(
            "---" if c in ("client", "server", "path", "target") else "---:" for c in columns
        )
        + "|"
    )
    for row in rows:
        lines.append(
            "| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |"
        )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = [
        f"Command: `{report['command']}` — {report['date']}, git {report.get('git')}, "
        f"{report['seconds']:.0f} s in all.",
        "",
        f"Machine: {m.get('cores')} cores, {m.get('cpu')}, {m.get('memory_gb')} GB, {m.get('os')}, "
        f"{m.get('implementation')} {m.get('python')}; load average at start "
        f"{m.get('load_average_at_start')}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".",
        "",
        "## Targets",
        "",
    ]
    checks = [c for s in report["scenarios"] for c in s["checks"]]
    rows = [
        {
            "target": c["name"],
            "wanted": c["target"],
            "measured": "—"
            if c["measured"] is None
            else f"{_cell(float(c['measured']))} {c['unit']}",
            "verdict": f"**{c['verdict']}**",
        }
        for c in checks
    ]
    out.append(_md_table(["target", "wanted", "measured", "verdict"], rows))
    for s in report["scenarios"]:
        out += ["", f"## {s['title']}", ""]
        if s["rows"]:
            out.append(_md_table(s["columns"], s["rows"]))
        for note in s["notes"]:
            out += ["", f"*{note}*"]
    return "\n".join(out) + "\n"
