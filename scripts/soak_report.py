#!/usr/bin/env python3
"""The soak's report (python3 standard library only), kept apart from its
traffic (scripts/soak.py) so it can be run again on any results directory:

  soak_report.py report --dir results/soak-STAMP --slope-bound KIB_PER_MIN ...
             samples.csv + round results -> summary.md, soak.svg, verdict
             (exit 1 on failure)
  soak_report.py roundline --dir DIR --round N
             one progress line for a finished round (exit 1 on a problem)
"""

import argparse
import csv
import json
import math
import os
import sys

from rctools import svg_doc, svg_escape
from soak import COUNTERS



def lsq(xs, ys):
    n = len(xs)
    if n < 3:
        return None, None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None, None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return b, my - b * mx


def last_json(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def svg_plot(rows, warm_s, fit, out, title):
    W, H = 900, 560
    ml, mr = 70, 70
    panels = [(50, 250), (330, 500)]  # y ranges (top, bottom) of two panels
    ts = [r["t_s"] / 60 for r in rows]
    tmax = max(ts[-1] if ts else 1, 0.1)

    def X(t):
        return ml + (W - ml - mr) * t / tmax

    def scale(vals, top, bot):
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-9:
            hi = lo + 1
        pad = (hi - lo) * 0.08
        lo, hi = max(0, lo - pad), hi + pad
        return (lambda v: bot - (bot - top) * (v - lo) / (hi - lo)), lo, hi

    def poly(pts, color, width=1.5):
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{d}"/>'

    def axes(top, bot, lo, hi, Y, label, color, right=False):
        out = []
        x0 = W - mr if right else ml
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            y = Y(v)
            if not right:
                out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{W - mr}" y2="{y:.1f}" stroke="#eee"/>')
            anchor = "start" if right else "end"
            dx = 6 if right else -6
            out.append(f'<text x="{x0 + dx}" y="{y + 4:.1f}" font-size="11" text-anchor="{anchor}" '
                       f'fill="{color}">{v:,.0f}</text>')
        lx = W - 15 if right else 15
        out.append(f'<text x="{lx}" y="{(top + bot) / 2:.0f}" font-size="12" fill="{color}" '
                   f'text-anchor="middle" transform="rotate(-90 {lx} {(top + bot) / 2:.0f})">{svg_escape(label)}</text>')
        return out

    parts = []
    # Warm-up shading and round boundaries on both panels.
    for top, bot in panels:
        wx = X(min(warm_s / 60, tmax))
        parts.append(f'<rect x="{ml}" y="{top}" width="{wx - ml:.1f}" height="{bot - top}" fill="#f4f4f4"/>')
        parts.append(f'<rect x="{ml}" y="{top}" width="{W - ml - mr}" height="{bot - top}" '
                     f'fill="none" stroke="#999"/>')
        prev = None
        for r in rows:
            if r["round"] != prev and prev is not None:
                x = X(r["t_s"] / 60)
                parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bot}" stroke="#ddd" '
                             'stroke-dasharray="3,3"/>')
            prev = r["round"]
    # Panel 1: RSS (MiB), fitted line after warm-up.
    top, bot = panels[0]
    rss = [r["rss_kib"] / 1024 for r in rows]
    Y, lo, hi = scale(rss, top, bot)
    parts += axes(top, bot, lo, hi, Y, "server RSS (MiB)", "#c0392b")
    parts.append(poly([(X(t), Y(v)) for t, v in zip(ts, rss)], "#c0392b"))
    if fit[0] is not None:
        b, a = fit  # KiB per minute, KiB
        t1 = warm_s / 60
        parts.append(poly([(X(t1), Y((a + b * t1) / 1024)), (X(tmax), Y((a + b * tmax) / 1024))],
                          "#2c3e50", 1))
    parts.append(f'<text x="{ml + 8}" y="{top + 16}" font-size="11" fill="#555">grey: warm-up; '
                 'dark line: least-squares fit after warm-up; dashed: round boundaries</text>')
    # Panel 2: connections (left axis) and open descriptors (right axis).
    top, bot = panels[1]
    conns = [r["connections"] for r in rows]
    Y, lo, hi = scale(conns, top, bot)
    parts += axes(top, bot, lo, hi, Y, "WebSocket connections", "#2980b9")
    parts.append(poly([(X(t), Y(v)) for t, v in zip(ts, conns)], "#2980b9"))
    fds = [r["fds"] for r in rows]
    Y2, lo2, hi2 = scale(fds, top, bot)
    parts += axes(top, bot, lo2, hi2, Y2, "server file descriptors", "#27ae60", right=True)
    parts.append(poly([(X(t), Y2(v)) for t, v in zip(ts, fds)], "#27ae60", 1))
    # Time axis.
    step = max(1, math.ceil(tmax / 10))
    for i in range(0, int(tmax) + 1, step):
        x = X(i)
        for top, bot in panels:
            parts.append(f'<line x1="{x:.1f}" y1="{bot}" x2="{x:.1f}" y2="{bot + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{panels[1][1] + 18}" font-size="11" '
                     f'text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 20}" font-size="12" '
                 'text-anchor="middle">minutes</text>')
    with open(out, "w") as f:
        f.write(svg_doc(W, H, title, parts, f'x="{W / 2}" y="22" font-size="15" text-anchor="middle"'))


def cmd_report(args):
    d = args.dir
    rows = []
    with open(os.path.join(d, "samples.csv")) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v) if "." in v else int(v)
                except (TypeError, ValueError):
                    row[k] = v
            rows.append(row)
    rows = [r for r in rows if isinstance(r.get("rss_kib"), int)]
    failures = []
    notes = []
    run_s = rows[-1]["t_s"] if rows else 0
    warm_s = max(180.0, 0.2 * run_s)
    post = [r for r in rows if r["t_s"] >= warm_s]
    if len(post) >= 12 and run_s - warm_s >= 120:
        b, a = lsq([r["t_s"] / 60 for r in post], [r["rss_kib"] for r in post])
    else:
        b = a = None
        notes.append(f"run of {run_s / 60:.1f} min is too short for the slope check "
                     f"(warm-up {warm_s / 60:.1f} min, then at least 2 min)")
    fd_b, _ = lsq([r["t_s"] / 60 for r in post], [r["fds"] for r in post]) if len(post) >= 12 else (None, None)
    if b is not None and b > args.slope_bound:
        failures.append(f"RSS grows {b:.0f} KiB/min after warm-up (bound {args.slope_bound:.0f} KiB/min)")

    # Rounds.
    rounds = []
    rdir = os.path.join(d, "rounds")
    for name in sorted(os.listdir(rdir), key=lambda s: int(s) if s.isdigit() else 0):
        rp = os.path.join(rdir, name)
        rr = {"round": int(name)}
        for g in ("echo", "broadcast", "channel", "churn", "idle", "api", "hostile"):
            rr[g] = last_json(os.path.join(rp, f"{g}.out"))
            rcf = os.path.join(rp, f"{g}.rc")
            rr[g + "_rc"] = open(rcf).read().strip() if os.path.exists(rcf) else "missing"
        rounds.append(rr)
    totals = {"echo": 0, "broadcast": 0, "channel": 0, "churn": 0, "idle": 0, "api": 0}
    loss = {"broadcast": 0, "channel": 0, "api": 0}
    errors = {"echo": 0, "broadcast": 0, "channel": 0, "churn": 0, "idle": 0}
    hostile = {}
    for rr in rounds:
        n = rr["round"]
        for g in ("echo", "broadcast", "channel", "churn", "idle"):
            j = rr[g]
            if rr[g + "_rc"] != "0" or j is None:
                failures.append(f"round {n}: ringcast-load {g} failed (exit {rr[g + '_rc']}), "
                                f"see rounds/{n}/{g}.out")
                continue
            totals[g] += j["opened"] if g == "idle" else j["count"]
            errors[g] += j["errors"]
            if j["errors"]:
                failures.append(f"round {n}: ringcast-load {g}: {j['errors']} errors")
            if g in ("broadcast", "channel"):
                loss[g] += j["loss"] or 0
                if j["loss"]:
                    failures.append(f"round {n}: {g} lost {j['loss']} of {j['expected']} deliveries")
                if not j["published"]:
                    failures.append(f"round {n}: {g} published nothing")
        j = rr["api"]
        if rr["api_rc"] != "0" or j is None:
            failures.append(f"round {n}: apicheck failed (exit {rr['api_rc']})")
        else:
            totals["api"] += j["received"]
            loss["api"] += j["lost"]
            if j["lost"] or j["duplicates"] or j["out_of_order"] or j["http_errors"] or j["subscriber_error"]:
                failures.append(f"round {n}: API publish check: {j}")
        j = rr["hostile"]
        if rr["hostile_rc"] != "0" or j is None:
            failures.append(f"round {n}: hostile clients failed (exit {rr['hostile_rc']})")
        else:
            for kind, k in j["kinds"].items():
                h = hostile.setdefault(kind, {"runs": 0, "ok": 0, "bad": 0, "bad_examples": []})
                h["runs"] += k["runs"]
                h["ok"] += k["ok"]
                h["bad"] += k["bad"]
                h["bad_examples"] += [f"round {n}: {e}" for e in k["bad_examples"]][:3]
            for e in j["errors"]:
                failures.append(f"round {n}: hostile: {e}")
    for kind, h in hostile.items():
        if h["bad"]:
            failures.append(f"hostile {kind}: {h['bad']} of {h['runs']} not handled as expected "
                            f"(e.g. {h['bad_examples'][:2]})")
    if not rounds:
        failures.append("no rounds ran")
    if args.panics:
        failures.append(f"the server log has {args.panics} panic line(s)")
    if args.server_died:
        failures.append(f"the server exited unexpectedly: {args.server_died}")
    if args.exit_status != "0":
        failures.append(f"the server's exit status after SIGTERM was {args.exit_status}, not 0")
    if any(r.get("metrics_ok") == 0 for r in rows):
        failures.append(f"/metrics failed in {sum(1 for r in rows if r.get('metrics_ok') == 0)} samples")

    title = (f"ringcast soak: {run_s / 60:.1f} min, {len(rounds)} rounds"
             + (f", RSS slope {b:+.0f} KiB/min after warm-up" if b is not None else ""))
    svg_plot(rows, warm_s, (b, a), os.path.join(d, "soak.svg"), title)

    def mib(k):
        return f"{k / 1024:.1f} MiB"
    at_warm = next((r for r in rows if r["t_s"] >= warm_s), rows[-1])
    peak = max(rows, key=lambda r: r["rss_kib"])
    last = rows[-1]
    first = rows[0]
    verdict = "PASS" if not failures else "FAIL"
    L = []
    L.append(f"# ringcast soak: {verdict}\n")
    L.append(f"- Date: {args.date}; commit {args.commit}; host: {args.host}")
    L.append(f"- Server: `{args.server_cmd}`")
    L.append(f"- Duration: {run_s / 60:.1f} min sampled every {args.interval:g} s ({len(rows)} samples), "
             f"{len(rounds)} rounds of about {args.round_s} s")
    L.append(f"- Load per round: {args.load}")
    L.append("")
    L.append("## Memory\n")
    L.append(f"Bound: RSS least-squares slope after warm-up (the first {warm_s / 60:.1f} min: "
             f"3 min or 20% of the run, whichever is larger) at most **{args.slope_bound:.0f} KiB/min**.\n")
    L.append("| | RSS | file descriptors | connections |")
    L.append("|---|---|---|---|")
    L.append(f"| start | {mib(first['rss_kib'])} | {first['fds']} | {first['connections']} |")
    L.append(f"| end of warm-up ({at_warm['t_s'] / 60:.1f} min) | {mib(at_warm['rss_kib'])} | {at_warm['fds']} "
             f"| {at_warm['connections']} |")
    L.append(f"| peak ({peak['t_s'] / 60:.1f} min) | {mib(peak['rss_kib'])} | {max(r['fds'] for r in rows)} "
             f"| {max(r['connections'] for r in rows)} |")
    L.append(f"| end ({last['t_s'] / 60:.1f} min, after the last round) | {mib(last['rss_kib'])} | {last['fds']} "
             f"| {last['connections']} |")
    L.append("")
    if b is not None:
        L.append(f"- RSS slope after warm-up: **{b:+.1f} KiB/min** ({len(post)} samples) -> "
                 f"{'within' if b <= args.slope_bound else 'OVER'} the bound")
    if fd_b is not None:
        L.append(f"- Descriptor slope after warm-up: {fd_b:+.2f} fds/min")
    L.append(f"- Peak RSS high-water mark (VmHWM): {mib(max(r['hwm_kib'] for r in rows))}")
    for n in notes:
        L.append(f"- Note: {n}")
    L.append("")
    L.append("## Messages\n")
    L.append("| traffic | total | loss | generator errors |")
    L.append("|---|---|---|---|")
    L.append(f"| echo (messages) | {totals['echo']:,} | - | {errors['echo']} |")
    L.append(f"| /broadcast (deliveries) | {totals['broadcast']:,} | {loss['broadcast']} | {errors['broadcast']} |")
    L.append(f"| /ws channel (deliveries) | {totals['channel']:,} | {loss['channel']} | {errors['channel']} |")
    L.append(f"| POST /api/publish -> /ws (messages) | {totals['api']:,} | {loss['api']} | - |")
    L.append(f"| churn (connect, echo, close cycles) | {totals['churn']:,} | - | {errors['churn']} |")
    L.append(f"| idle (connections held through heartbeats) | {totals['idle']:,} | - | {errors['idle']} |")
    L.append("")
    L.append("Per round (loss = deliveries expected minus received):\n")
    L.append("| round | echo msgs | broadcast deliveries / loss | channel deliveries / loss "
             "| api msgs / loss | churn cycles | hostile runs / bad |")
    L.append("|---|---|---|---|---|---|---|")

    def g(j, k, default="?"):
        return j.get(k, default) if j else default
    for rr in rounds:
        L.append(f"| {rr['round']} | {g(rr['echo'], 'count'):,} | {g(rr['broadcast'], 'count'):,} / "
                 f"{g(rr['broadcast'], 'loss')} | {g(rr['channel'], 'count'):,} / {g(rr['channel'], 'loss')} "
                 f"| {g(rr['api'], 'received')} / {g(rr['api'], 'lost')} | {g(rr['churn'], 'count'):,} "
                 f"| {g(rr['hostile'], 'runs')} / {g(rr['hostile'], 'bad')} |")
    L.append("")
    L.append("## Hostile clients\n")
    L.append("| kind | runs | handled as expected | not |")
    L.append("|---|---|---|---|")
    for kind in sorted(hostile):
        h = hostile[kind]
        L.append(f"| {kind} | {h['runs']} | {h['ok']} | {h['bad']} |")
    L.append("")
    L.append("## Server counters at the end\n")
    L.append("| counter | value |")
    L.append("|---|---|")
    ref = next((r for r in reversed(rows) if r.get("metrics_ok") == 1), rows[-1])
    for col, name in COUNTERS + [("upgrades", 'ringcast_handshakes_total{outcome="upgraded"}'),
                                 ("upgrades_refused", "ringcast_handshakes_total{outcome=refused, unauthorized, forbidden "
                                                      "or over_capacity}")]:
        L.append(f"| `{name}` | {ref.get(col, '?'):,} |" if isinstance(ref.get(col), int)
                 else f"| `{name}` | {ref.get(col, '?')} |")
    L.append("")
    L.append("## Checks\n")
    L.append(f"- Panics in the server log: {args.panics}")
    L.append(f"- Server alive through every round: {'no: ' + args.server_died if args.server_died else 'yes'}")
    L.append(f"- Exit status after SIGTERM: {args.exit_status}")
    if failures:
        L.append("\n## Failures\n")
        for fl in failures:
            L.append(f"- {fl}")
    L.append("")
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write("\n".join(L))
    print("\n".join(L))
    sys.exit(1 if failures else 0)


def cmd_roundline(args):
    """One line of progress for a finished round."""
    def j(name):
        return last_json(os.path.join(args.dir, f"{name}.out")) or {}

    def rc(name):
        try:
            with open(os.path.join(args.dir, f"{name}.rc")) as f:
                return f.read().strip()
        except OSError:
            return "missing"
    parts = []
    bad = False
    for g in ("echo", "broadcast", "channel", "churn", "idle", "api", "hostile"):
        x = j(g)
        if rc(g) != "0" or not x:
            parts.append(f"{g} FAILED (exit {rc(g)})")
            bad = True
        elif g in ("broadcast", "channel"):
            parts.append(f"{g} {x['count']:,} deliveries, loss {x['loss']}, errors {x['errors']}")
            bad |= bool(x["loss"] or x["errors"])
        elif g == "api":
            parts.append(f"api {x['received']}/{x['published']}, lost {x['lost']}")
            bad |= bool(x["lost"] or x["http_errors"] or x["duplicates"] or x["out_of_order"])
        elif g == "hostile":
            parts.append(f"hostile {x['runs']} runs, {x['bad']} bad")
            bad |= bool(x["bad"])
        elif g == "idle":
            parts.append(f"idle {x['opened']} held, errors {x['errors']}")
            bad |= bool(x["errors"])
        else:
            parts.append(f"{g} {x['count']:,}, errors {x['errors']}")
            bad |= bool(x["errors"])
    print(f"round {args.round}{' (PROBLEM)' if bad else ''}: " + "; ".join(parts), flush=True)
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--slope-bound", type=float, required=True)
    r.add_argument("--interval", type=float, default=5)
    r.add_argument("--round-s", default="?")
    r.add_argument("--panics", type=int, default=0)
    r.add_argument("--server-died", default="")
    r.add_argument("--exit-status", default="0")
    r.add_argument("--server-cmd", default="")
    r.add_argument("--load", default="")
    r.add_argument("--commit", default="")
    r.add_argument("--date", default="")
    r.add_argument("--host", default="")
    q = sub.add_parser("roundline")
    q.add_argument("--dir", required=True)
    q.add_argument("--round", required=True)
    args = p.parse_args()
    {"report": cmd_report, "roundline": cmd_roundline}[args.cmd](args)


if __name__ == "__main__":
    main()
