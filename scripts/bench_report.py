#!/usr/bin/env python3
"""Summarise a scripts/bench.sh run: results/<stamp>/raw/*.json ->
summary.md (medians, min-max, ringcast/tokio ratios, syscalls per message)
and chart.svg (headline metric per scenario). Standard library only."""

import json
import statistics
import sys
from pathlib import Path

from rctools import svg_doc

SERVERS = ["ringcast", "ringcast-tokio"]
ORDER = ["echo", "echo-big", "echo-lat", "broadcast", "broadcast-wide", "channels", "channels-ordered", "idle", "churn"]


def get(rec, path, default=None):
    cur = rec
    for p in path.split("."):
        if not isinstance(cur, dict) or cur.get(p) is None:
            return default
        cur = cur[p]
    return cur


def syscalls_per(rec):
    n = get(rec, "perf.raw_syscalls:sys_enter")
    c = rec.get("count") or 0
    return n / c if n is not None and c else None


def ms(path):
    return lambda r: (get(r, path) / 1000.0) if get(r, path) is not None else None


# (label, extractor, unit format, higher is better[, "total"]): a row
# marked "total" shows the sum over rounds (failure counts: one bad round
# must not vanish in a median), min–max per round in brackets.
THROUGHPUT = [
    ("msgs/s", lambda r: r.get("per_s"), "{:,.0f}", True),
    ("msgs per server CPU-s", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("latency p50 (ms)", ms("latency_us.p50"), "{:.2f}", False),
    ("latency p99 (ms)", ms("latency_us.p99"), "{:.2f}", False),
    ("syscalls per msg", syscalls_per, "{:.4f}", False),
    ("server CPU (cores)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
    ("generator CPU (cores)", lambda r: get(r, "generator.utilization"), "{:.2f}", None),
]
BROADCAST = [
    ("deliveries/s", lambda r: r.get("per_s"), "{:,.0f}", True),
    ("delivery p50 (ms)", ms("latency_us.p50"), "{:.2f}", False),
    ("delivery p99 (ms)", ms("latency_us.p99"), "{:.2f}", False),
    ("lost (of expected)", lambda r: r.get("loss"), "{:,.0f}", False),
    ("expected deliveries", lambda r: r.get("expected"), "{:,.0f}", None),
    ("deliveries per server CPU-s", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("syscalls per delivery", syscalls_per, "{:.4f}", False),
    ("server CPU (cores)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
]
# /ws channels: the broadcast figures plus the ordering check (offsets each
# subscriber saw, whole run). "–" in the gap/reorder rows: not checked, the
# server sent no offsets.
CHANNELS = BROADCAST[:4] + [
    ("gaps (failures)", lambda r: r.get("gaps"), "{:,.0f}", False, "total"),
    ("offsets missing in gaps", lambda r: get(r, "stream.gap_offsets") if r.get("gaps") is not None else None, "{:,.0f}", False, "total"),
    ("duplicates/reorders (failures)", lambda r: r.get("reorders"), "{:,.0f}", False, "total"),
    ("publishers", lambda r: r.get("publishers"), "{:,.0f}", None),
    ("publishers' distinct server cores", lambda r: get(r, "stream.publisher_distinct_cores") if get(r, "stream.welcomes") else None, "{:,.0f}", None),
] + BROADCAST[4:]
IDLE = [
    ("RSS per connection (B)", lambda r: get(r, "server.rss_per_conn"), "{:,.0f}", False),
    ("server RSS holding (MiB)", lambda r: (get(r, "server.rss") or 0) / 1048576, "{:.1f}", False),
    ("handshakes/s while opening", lambda r: r.get("handshakes_per_s"), "{:,.0f}", True),
    ("connections opened", lambda r: r.get("opened"), "{:,.0f}", None),
]
CHURN = [
    ("cycles/s", lambda r: r.get("per_s"), "{:,.0f}", True),
    ("cycles per server CPU-s", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("syscalls per cycle", syscalls_per, "{:.1f}", False),
    ("errors", lambda r: r.get("errors"), "{:,.0f}", False),
    ("server CPU (cores)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
]
METRICS = {
    "echo": THROUGHPUT, "echo-big": THROUGHPUT, "echo-lat": THROUGHPUT,
    "broadcast": BROADCAST, "broadcast-wide": BROADCAST,
    "channels": CHANNELS, "channels-ordered": CHANNELS,
    "idle": IDLE, "churn": CHURN,
}
# The one number per scenario for the chart.
HEADLINE = {
    "echo": 1, "echo-big": 1, "echo-lat": 3, "broadcast": 2, "broadcast-wide": 2,
    "channels": 2, "channels-ordered": 2, "idle": 0, "churn": 1,
}
DESCR = {
    "echo": "100 conns x 16 in flight x 32 B text",
    "echo-big": "50 conns x 4 in flight x 16 KiB binary",
    "echo-lat": "1,000 conns x 1 in flight x 32 B",
    "broadcast": "1,000 subscribers, 2,000 msg/s x 64 B",
    "broadcast-wide": "5,000 subscribers, 300 msg/s x 64 B",
    "channels": "as broadcast, through one /ws channel (history off)",
    "channels-ordered": "as channels, 2 publishers on different server cores, history on; offsets checked",
    "idle": "connections held",
    "churn": "64 loops: connect, handshake, 1 echo, close",
}


def fmt(f, v):
    return "–" if v is None else f.format(v)


def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def main(out_dir):
    out = Path(out_dir)
    recs = [json.loads(p.read_text()) for p in sorted((out / "raw").glob("*.json"))]
    host = json.loads((out / "host.json").read_text()) if (out / "host.json").exists() else {}
    global SERVERS
    # The run's servers in the order bench.sh was given them (the ratio is
    # the first over the second): ringcast vs the baseline, or an A/B of
    # two ringcast builds.
    SERVERS = (host.get("servers") or " ".join(SERVERS)).split()[:2]
    a, b = SERVERS
    by = {}
    for r in recs:
        by.setdefault(r["bench_scenario"], {}).setdefault(r["server_name"], []).append(r)
    scenarios = [s for s in ORDER if s in by] + sorted(s for s in by if s not in ORDER)

    lines = []
    lines.append(f"# {a} vs {b}")
    lines.append("")
    lines.append(
        f"{host.get('date', '')} · commit {host.get('commit', '?')} · kernel {host.get('kernel', '?')} · "
        f"{host.get('cpus', '?')} CPUs: server on CPU {host.get('server_cpus', '?')}, "
        f"generator on CPU {host.get('gen_cpus', '?')} · {host.get('rounds', '?')} alternating rounds of "
        f"{host.get('warmup', '?')} s warm-up + {host.get('duration', '?')} s measured"
        + (" (quick)" if host.get("quick") else "")
    )
    lines.append("")
    lines.append(
        "Medians over rounds, min–max in brackets. *per server CPU-s* = work done per second of server CPU time "
        "(user + system, from the scheduler), the figure that stays meaningful on a shared host. Syscalls are every "
        "syscall the server made during the measured window (`perf stat -e raw_syscalls:sys_enter`), per message. "
        f"Ratio = {a} / {b} (↑ higher is better, ↓ lower is better)."
    )
    lines.append("")
    chart = []
    for s in scenarios:
        lines.append(f"## {s}: {DESCR.get(s, '')}" + (f" ({by[s][SERVERS[0]][0].get('conns')} connections)" if s == "idle" and SERVERS[0] in by[s] else ""))
        lines.append("")
        lines.append(f"| metric | {a} | {b} | ratio |")
        lines.append("|---|---|---|---|")
        for i, (label, ex, f, better, *agg) in enumerate(METRICS.get(s, THROUGHPUT)):
            cells = []
            meds = []
            for srv in SERVERS:
                vals = [ex(r) for r in by[s].get(srv, [])]
                med, lo, hi = summarize(vals)
                if agg == ["total"] and med is not None:
                    med = sum(v for v in vals if v is not None)
                    cells.append(f"{fmt(f, med)} total [{fmt(f, lo)}–{fmt(f, hi)}]")
                else:
                    cells.append("–" if med is None else f"{fmt(f, med)} [{fmt(f, lo)}–{fmt(f, hi)}]")
                meds.append(med)
            ratio = "–"
            if meds[0] is not None and meds[1] not in (None, 0):
                arrow = "" if better is None else (" ↑" if better else " ↓")
                ratio = f"{meds[0] / meds[1]:.2f}×{arrow}"
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
            if i == HEADLINE.get(s, -1):
                chart.append((s, label, f, meds, better))
        lines.append("")
    lines.extend(ordering_notes(recs))
    errors = [(r["bench_scenario"], r["server_name"], r["round"], r.get("errors")) for r in recs if r.get("errors")]
    if errors:
        lines.append("Runs with generator-side errors: " + ", ".join(f"{a}/{b}#{c}: {d}" for a, b, c, d in errors))
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "chart.svg").write_text(svg(chart))


def ordering_notes(recs):
    """Channel runs: ordering failures (any gap or reorder), runs whose
    order could not be checked, publishers that had to share a core."""
    out = []
    chan = sorted((r for r in recs if r.get("stream")), key=lambda r: (r["bench_scenario"], r["server_name"], r["round"]))
    name = lambda r: f"{r['bench_scenario']}/{r['server_name']}#{r['round']}"
    bad = [r for r in chan if (r.get("gaps") or 0) + (r.get("reorders") or 0) > 0]
    if bad:
        out.append("**ORDERING FAILURES** (offsets not consecutive at a subscriber): " + ", ".join(
            f"{name(r)}: {r['gaps']} gaps ({get(r, 'stream.gap_offsets', 0)} offsets missing), "
            f"{r['reorders']} duplicates/reorders" for r in bad))
        out.append("")
    elif any(r.get("gaps") is not None for r in chan):
        checked = [r for r in chan if r.get("gaps") is not None]
        out.append(f"Channel ordering: no gap or reorder in {len(checked)} run(s) "
                   f"({sum(get(r, 'stream.with_offset', 0) for r in checked):,} deliveries checked).")
        out.append("")
    unchecked = [r for r in chan if r.get("gaps") is None]
    if unchecked:
        out.append("Order not checked (the server sent no offsets): " + ", ".join(name(r) for r in unchecked))
        out.append("")
    shared = [r for r in chan if get(r, "stream.placement_gave_up")]
    if shared:
        out.append("Publishers sharing a server core (no distinct core found; e.g. a 1-core server): "
                   + ", ".join(f"{name(r)}: cores {get(r, 'stream.publisher_cores')}" for r in shared))
        out.append("")
    return out


def svg(rows):
    """Horizontal bars: each scenario's headline metric for both servers."""
    w, left, bar_h, gap = 760, 250, 16, 14
    h = 40 + len(rows) * (2 * bar_h + gap) + 20
    colors = dict(zip(SERVERS, ["#d9480f", "#1c7ed6"]))
    out = []
    y = 40
    for scen, label, f, meds, better in rows:
        top = max((m for m in meds if m is not None), default=0) or 1
        note = "higher is better" if better else "lower is better"
        out.append(f'<text x="10" y="{y + bar_h}" font-weight="bold">{scen}</text>')
        out.append(f'<text x="10" y="{y + 2 * bar_h}" fill="#555">{label} ({note})</text>')
        for i, srv in enumerate(SERVERS):
            m = meds[i]
            length = 0 if m is None else (w - left - 140) * m / top
            yy = y + i * bar_h
            out.append(f'<rect x="{left}" y="{yy}" width="{length:.1f}" height="{bar_h - 2}" fill="{colors[srv]}"/>')
            out.append(f'<text x="{left + length + 4:.1f}" y="{yy + bar_h - 4}">{srv}: {fmt(f, m)}</text>')
        y += 2 * bar_h + gap
    title = f"{SERVERS[0]} vs {SERVERS[1]} (medians; bar length relative to the larger)"
    return svg_doc(w, h, title, out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_report.py results/<stamp>")
    main(sys.argv[1])
