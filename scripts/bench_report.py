#!/usr/bin/env python3
"""Summarise a scripts/bench.sh run: results/<stamp>/raw/*.json ->
summary.md (medians, min-max, ringcast/tokio ratios, syscalls per message)
and chart.svg (headline metric per scenario). The cluster scenarios get
tables of their own: `cluster` beside the single-node `channels-ordered`
of the same run, `cluster-publish` the in-memory engine beside the Redis
engine, and the compression scenarios (broadcast-json, echo-deflate,
idle-deflate) their variants side by side: compression off vs on, with the
bytes on the wire per delivery. Runs over TLS (bench.sh --tls) are sections
of their own, "<scenario> over TLS", right after the plain ones, with the
TLS / plain ratio of the headline figure when both ran. Standard library
only."""

import json
import statistics
import sys
from pathlib import Path

from rctools import svg_doc, svg_escape

SERVERS = ["ringcast", "ringcast-tokio"]
ORDER = ["echo", "echo-big", "echo-lat", "broadcast", "broadcast-light", "broadcast-wide", "channels", "channels-ordered", "idle", "churn"]
# Scenarios compared across setups rather than across servers.
CLUSTERED = ["cluster", "cluster-publish"]
# Compression scenarios: one column per server and variant (the baseline
# runs the first variant only); the ratio is ringcast's second variant over
# its first.
COMPRESSION = {
    "broadcast-json": ["off", "on"],
    "echo-deflate": ["off", "on"],
    "idle-deflate": ["plain", "deflate"],
}


# Runs over TLS are filed under "<scenario> over TLS".
TLS_SUFFIX = " over TLS"


def base(key):
    """The scenario of a section key (its name without " over TLS")."""
    return key[: -len(TLS_SUFFIX)] if key.endswith(TLS_SUFFIX) else key


def section_key(rec):
    return rec["bench_scenario"] + (TLS_SUFFIX if rec.get("bench_tls") or rec.get("tls") else "")


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
# channels-ordered (one node) beside cluster (two nodes and Redis): the
# server rows are summed over the nodes; Redis's own CPU apart.
REDIS_CPU = ("redis CPU (cores)", lambda r: get(r, "watched.redis.utilization"), "{:.2f}", None)


def total_cpu(r):
    s, b = get(r, "server.utilization"), get(r, "watched.redis.utilization", 0.0)
    return None if s is None else s + b


def per_total_cpu(r):
    s, b = get(r, "server.cpu_s"), get(r, "watched.redis.cpu_s", 0.0)
    return r.get("count") / (s + b) if s is not None and r.get("count") is not None and s + b > 0 else None


CLUSTER = CHANNELS[:9] + [
    ("deliveries per server CPU-s (nodes summed)", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("deliveries per CPU-s of nodes + Redis", per_total_cpu, "{:,.0f}", True),
    ("syscalls per delivery (nodes summed)", syscalls_per, "{:.4f}", False),
    ("server CPU (cores, nodes summed)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
    REDIS_CPU,
    ("nodes + Redis CPU (cores)", total_cpu, "{:.2f}", None),
    ("generator CPU (cores)", lambda r: get(r, "generator.utilization"), "{:.2f}", None),
]
PUBLISH = [
    ("acks/s", lambda r: r.get("per_s"), "{:,.0f}", True),
    ("ack p50 (ms)", ms("latency_us.p50"), "{:.2f}", False),
    ("ack p99 (ms)", ms("latency_us.p99"), "{:.2f}", False),
    ("errors", lambda r: r.get("errors"), "{:,.0f}", False, "total"),
    ("acks per server CPU-s", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("acks per CPU-s of node + Redis", per_total_cpu, "{:,.0f}", True),
    ("syscalls per ack", syscalls_per, "{:.4f}", False),
    ("server CPU (cores)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
    REDIS_CPU,
    ("generator CPU (cores)", lambda r: get(r, "generator.utilization"), "{:.2f}", None),
    ("publishes in flight", lambda r: (r.get("conns") or 0) * (r.get("in_flight") or 0), "{:,.0f}", None),
]
IDLE = [
    ("RSS per connection (B)", lambda r: get(r, "server.rss_per_conn"), "{:,.0f}", False),
    ("server RSS holding (MiB)", lambda r: (get(r, "server.rss") or 0) / 1048576, "{:.1f}", False),
    ("handshakes/s while opening", lambda r: r.get("handshakes_per_s"), "{:,.0f}", True),
    ("handshakes per server CPU-s while opening", lambda r: r.get("handshakes_per_server_cpu_s"), "{:,.0f}", True),
    ("generator CPU while opening (cores)",
     lambda r: r["open_generator_cpu_s"] / r["open_s"] if r.get("open_generator_cpu_s") and r.get("open_s") else None,
     "{:.2f}", None),
    ("connections opened", lambda r: r.get("opened"), "{:,.0f}", None),
]
def compressed_share(r):
    c, p = get(r, "wire.compressed"), get(r, "wire.plain")
    return c / (c + p) if c is not None and p is not None and c + p > 0 else None


def wire_rows(one, many):
    """The bytes on the wire per counted message (`one`: delivery, msg;
    `many`: its plural)."""
    return [
        (f"payload bytes on the wire per {one}", lambda r: get(r, "wire.payload_per_msg"), "{:,.0f}", False),
        (f"bytes read per {one} (all socket reads)", lambda r: get(r, "wire.read_per_msg"), "{:,.0f}", False),
        (f"payload bytes per {one} inflated", lambda r: get(r, "wire.inflated_per_msg"), "{:,.0f}", None),
        ("compression ratio (inflated / wire, compressed msgs)", lambda r: get(r, "wire.compressed_ratio"), "{:.2f}", True),
        (f"{many} that came compressed", compressed_share, "{:.0%}", None),
    ]


RSS_MIB = ("server RSS (MiB)", lambda r: (get(r, "server.rss") or 0) / 1048576 if get(r, "server.rss") else None, "{:.1f}", False)
BROADCAST_JSON = BROADCAST[:4] + [BROADCAST[5]] + wire_rows("delivery", "deliveries") + [
    BROADCAST[6], BROADCAST[7], RSS_MIB,
    ("generator CPU (cores)", lambda r: get(r, "generator.utilization"), "{:.2f}", None),
]
ECHO_DEFLATE = THROUGHPUT[:4] + wire_rows("msg", "msgs") + [
    ("client's message on the wire (B)", lambda r: get(r, "client_compressed.wire", r.get("size")), "{:,.0f}", False),
] + THROUGHPUT[4:] + [RSS_MIB]
IDLE_DEFLATE = IDLE
CHURN = [
    ("cycles/s", lambda r: r.get("per_s"), "{:,.0f}", True),
    ("cycles per server CPU-s", lambda r: get(r, "server.per_cpu_s"), "{:,.0f}", True),
    ("syscalls per cycle", syscalls_per, "{:.1f}", False),
    ("errors", lambda r: r.get("errors"), "{:,.0f}", False),
    ("server CPU (cores)", lambda r: get(r, "server.utilization"), "{:.2f}", None),
]
METRICS = {
    "echo": THROUGHPUT, "echo-big": THROUGHPUT, "echo-lat": THROUGHPUT,
    "broadcast": BROADCAST, "broadcast-light": BROADCAST, "broadcast-wide": BROADCAST,
    "channels": CHANNELS, "channels-ordered": CHANNELS,
    "idle": IDLE, "churn": CHURN,
    "cluster": CLUSTER, "cluster-publish": PUBLISH,
    "broadcast-json": BROADCAST_JSON, "echo-deflate": ECHO_DEFLATE, "idle-deflate": IDLE_DEFLATE,
}
# The one number per scenario for the chart.
HEADLINE = {
    "echo": 1, "echo-big": 1, "echo-lat": 3, "broadcast": 2, "broadcast-light": 2, "broadcast-wide": 2,
    "channels": 2, "channels-ordered": 2, "idle": 0, "churn": 1,
    "cluster": 2, "cluster-publish": 0,
    "broadcast-json": 4, "echo-deflate": 1, "idle-deflate": 0,
}
DESCR = {
    "echo": "100 conns x 16 in flight x 32 B text",
    "echo-big": "50 conns x 4 in flight x 16 KiB binary",
    "echo-lat": "1,000 conns x 1 in flight x 32 B",
    "broadcast": "1,000 subscribers, 2,000 msg/s x 64 B",
    "broadcast-light": "1,000 subscribers, light publisher rate (BROADCAST_LIGHT_RATE, default 500 msg/s) x 64 B",
    "broadcast-wide": "5,000 subscribers, 300 msg/s x 64 B",
    "channels": "as broadcast, through one /ws channel (history off)",
    "channels-ordered": "as channels, 2 publishers on different server cores, history on; offsets checked",
    "idle": "connections held",
    "churn": "64 loops: connect, handshake, 1 echo, close",
    "cluster": "channels-ordered over 2 nodes sharing the channel through Redis",
    "cluster-publish": "closed-loop /ws publishes against one node: in-memory engine vs Redis engine",
    "broadcast-json": "1,000 subscribers, 1 KB JSON messages, compression off vs on",
    "echo-deflate": "100 conns x 16 in flight x 1 KB JSON, compression off vs on (both directions)",
    "idle-deflate": "connections held, permessage-deflate negotiated or not (server compression on)",
}


def fmt(f, v):
    return "–" if v is None else f.format(v)


def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def table(columns, metrics, chart=None, chart_key=None, headline=-1, ratio=(0, 1), ratio_label="ratio",
          ratios=None):
    """A markdown table, one column per (header, records) of `columns`
    (medians, min–max), with a ratio column when there are two or more
    and `ratio` names two of them: column ratio[0] over column ratio[1];
    `ratios`, a list of (numerator, denominator, label), gives several.
    Appends the headline row to `chart`."""
    heads = [h for h, _ in columns]
    if ratios is None:
        ratios = [(ratio[0], ratio[1], ratio_label)] if ratio is not None else []
    ratios = [r for r in ratios if len(columns) >= 2 and max(r[0], r[1]) < len(columns)]
    lines = ["| metric | " + " | ".join(heads) + " |" + "".join(f" {lbl} |" for _, _, lbl in ratios),
             "|---|" + "---|" * len(columns) + "---|" * len(ratios)]
    for i, (label, ex, f, better, *agg) in enumerate(metrics):
        cells, meds = [], []
        for _, recs in columns:
            vals = [ex(r) for r in recs]
            med, lo, hi = summarize(vals)
            if agg == ["total"] and med is not None:
                med = sum(v for v in vals if v is not None)
                cells.append(f"{fmt(f, med)} total [{fmt(f, lo)}–{fmt(f, hi)}]")
            else:
                cells.append("–" if med is None else f"{fmt(f, med)} [{fmt(f, lo)}–{fmt(f, hi)}]")
            meds.append(med)
        row = f"| {label} | " + " | ".join(cells) + " |"
        for n, d, _ in ratios:
            num, den = meds[n], meds[d]
            if num is not None and den not in (None, 0):
                arrow = "" if better is None else (" ↑" if better else " ↓")
                quotient = f"{num / den:.2f}×{arrow}"
            else:
                quotient = "–"
            row += f" {quotient} |"
        lines.append(row)
        if chart is not None and i == headline:
            chart.append((chart_key, label, f, meds, better, heads))
    return lines


def main(out_dir):
    out = Path(out_dir)
    recs = [json.loads(p.read_text()) for p in sorted((out / "raw").glob("*.json"))]
    host = json.loads((out / "host.json").read_text()) if (out / "host.json").exists() else {}
    global SERVERS
    # The run's servers in the order bench.sh was given them (the ratio is
    # the first over the second): ringcast vs the baseline, an A/B of two
    # ringcast builds, or one server alone (no ratio).
    SERVERS = (host.get("servers") or " ".join(SERVERS)).split()
    # With peers (--peer), one ratio column per other server: the first
    # over each; two servers keep the one "ratio" column.
    ratios = ([(0, i, f"{SERVERS[0]} / {SERVERS[i]}") for i in range(1, len(SERVERS))]
              if len(SERVERS) > 2 else None)
    by = {}
    for r in recs:
        by.setdefault(section_key(r), {}).setdefault(r["server_name"], []).append(r)
    special = lambda s: base(s) in CLUSTERED or base(s) in COMPRESSION
    scenarios = [k for s in ORDER for k in (s, s + TLS_SUFFIX) if k in by] + sorted(
        s for s in by if base(s) not in ORDER and not special(s))

    lines = []
    lines.append("# " + " vs ".join(SERVERS))
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
        + (f"Ratio = {SERVERS[0]} / {SERVERS[1]} (↑ higher is better, ↓ lower is better)." if len(SERVERS) == 2 else "")
        + ("Ratios: the first server over each other one (↑ higher is better, ↓ lower is better)." if len(SERVERS) > 2 else "")
    )
    lines.append("")
    if any(r.get("tls") for r in recs):
        lines.extend(tls_note(recs, host))
    chart = []
    for s in scenarios:
        b = base(s)
        lines.append(f"## {s}: {DESCR.get(b, '')}" + (f" ({by[s][SERVERS[0]][0].get('conns')} connections)" if b == "idle" and SERVERS[0] in by[s] else ""))
        lines.append("")
        lines.extend(table([(srv, by[s].get(srv, [])) for srv in SERVERS], METRICS.get(b, THROUGHPUT),
                           chart, s, HEADLINE.get(b, -1), ratios=ratios))
        lines.append("")
        if s != b and b in by:
            lines.extend(tls_cost(by[b], by[s], METRICS.get(b, THROUGHPUT), HEADLINE.get(b, -1)))
    for suffix in ("", TLS_SUFFIX):
        lines.extend(cluster_sections(by, host, chart, suffix))
        lines.extend(compression_sections(by, host, chart, suffix))
    lines.extend(ordering_notes(recs))
    errors = [(r["bench_scenario"] + (f"-{r['variant']}" if r.get("variant") else "") + (" (TLS)" if r.get("tls") else ""),
               r["server_name"], r["round"], r.get("errors"))
              for r in recs if r.get("errors")]
    if errors:
        lines.append("Runs with generator-side errors: " + ", ".join(f"{a}/{b}#{c}: {d}" for a, b, c, d in errors))
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "chart.svg").write_text(svg(chart))


def tls_note(recs, host):
    """What the TLS runs negotiated, and how the certificate was made."""
    seen = sorted({" ".join(str(x) for x in (get(r, "tls.version"), get(r, "tls.cipher"), get(r, "tls.kx")) if x)
                   + f", ALPN {get(r, 'tls.alpn')}" for r in recs if r.get("tls")})
    resumed = sum(get(r, "tls.resumed", 0) for r in recs if r.get("tls"))
    key = {"ec": "ECDSA P-256", "rsa": "RSA 2048"}.get(host.get("tls_key"), host.get("tls_key") or "?")
    return [
        f"TLS runs (sections *over TLS*): `wss://`, server certificate {key} signed by a throwaway CA "
        f"(openssl), generator offering TLS {host.get('tls_version') or 'any'} as browsers order it (X25519, "
        f"AES-128-GCM first) with the certificate verified; "
        f"negotiated: {'; '.join(seen) or '?'}; sessions resumed: {resumed} (resumption off, every handshake full).",
        "",
    ]


def tls_cost(plain_by, tls_by, metrics, headline):
    """One line under a TLS section: each server's work per server CPU-s
    (the headline figure where there is none: idle's RSS per connection)
    over TLS divided by the same figure plain (the same run)."""
    pick = next((i for i, m in enumerate(metrics) if "per server CPU-s" in m[0]), headline)
    if pick < 0 or pick >= len(metrics):
        return []
    label, ex, _, better, *_ = metrics[pick]
    parts = []
    for srv in SERVERS + sorted(set(tls_by) - set(SERVERS)):
        p, t = summarize([ex(r) for r in plain_by.get(srv, [])])[0], summarize([ex(r) for r in tls_by.get(srv, [])])[0]
        if p not in (None, 0) and t is not None:
            parts.append(f"{srv} {t / p:.2f}×")
    if not parts:
        return []
    note = "" if better is None else (" (higher is better)" if better else " (lower is better)")
    return [f"TLS / plain, {label}{note}: " + ", ".join(parts) + ".", ""]


def layout(recs):
    """Where a scenario's runs put the nodes and the generator."""
    if not recs:
        return "not run"
    r = recs[0]
    cpus = r.get("node_cpus") or []
    nodes = " and ".join(f"CPU {c}" for c in cpus)
    return (f"{len(cpus)} node{'s' if len(cpus) != 1 else ''} on {nodes}, generator on CPU {r.get('gen_cpus', '?')}")


def cluster_sections(by, host, chart, suffix=""):
    """`cluster` beside the run's single-node `channels-ordered` (per
    server label), and `cluster-publish`'s two engines side by side
    (`suffix`: " over TLS" for the TLS runs)."""
    out = []
    labels = [s for s in SERVERS if s in by.get("cluster" + suffix, {}) or s in by.get("cluster-publish" + suffix, {})]
    labels += sorted({s for sc in CLUSTERED for s in by.get(sc + suffix, {})} - set(labels))
    many = len(labels) > 1
    for srv in labels:
        tag = f" ({srv})" if many else ""
        cl = by.get("cluster" + suffix, {}).get(srv, [])
        if cl:
            single = by.get("channels-ordered" + suffix, {}).get(srv, [])
            r = cl[0]
            out.append(f"## cluster{suffix}{tag}: {DESCR['cluster']}, beside single-node channels-ordered")
            out.append("")
            out.append(
                f"1,000 subscribers split over the nodes ({'/'.join(str(n) for n in r.get('conns_per_addr') or [])}), "
                f"2 publishers (one per node) sharing 2,000 msg/s × 64 B, history 100, offsets checked. "
                f"cluster: {layout(cl)}, each node one core with `--broker redis://` "
                f"(Redis {host.get('redis') or '?'} on CPU {host.get('redis_cpus', '?')}, no persistence, emptied before each run). "
                f"channels-ordered: {layout(single)}"
                + (", one server core, so its 2 publishers share it" if single and all(len(str(c).replace(',', '-').split('-')) == 1 for c in single[0].get('node_cpus') or []) else "")
                + ". Ratio = cluster / channels-ordered."
            )
            out.append("")
            out.extend(table([("channels-ordered (1 node)", single), ("cluster (2 nodes + Redis)", cl)],
                             CLUSTER, chart, "cluster" + suffix + tag, HEADLINE["cluster"], ratio=(1, 0)))
            out.append("")
        cp = by.get("cluster-publish" + suffix, {}).get(srv, [])
        if cp:
            mem = [r for r in cp if r.get("variant") == "memory"]
            red = [r for r in cp if r.get("variant") == "redis"]
            r = cp[0]
            out.append(f"## cluster-publish{suffix}{tag}: {DESCR['cluster-publish']}")
            out.append("")
            out.append(
                f"{r.get('conns')} connections × {r.get('in_flight')} publishes in flight × {r.get('size')} B to one channel, "
                f"each publish answered by its ack (offset numbered by the engine; with Redis, by the publish script), no subscribers. "
                f"{layout(cp)}; Redis on CPU {host.get('redis_cpus', '?')}. Ratio = Redis / in-memory."
            )
            out.append("")
            out.extend(table([("in-memory engine", mem), ("Redis engine", red)], PUBLISH, chart,
                             "cluster-publish" + suffix + tag, HEADLINE["cluster-publish"], ratio=(1, 0)))
            out.append("")
    return out


def compression_sections(by, host, chart, suffix=""):
    """Each compression scenario: one column per server and variant,
    ringcast's (the first server's) second variant over its first
    (`suffix`: " over TLS" for the TLS runs)."""
    out = []
    for scen, variants in COMPRESSION.items():
        key = scen + suffix
        if key not in by:
            continue
        servers = [s for s in SERVERS if s in by[key]] + sorted(set(by[key]) - set(SERVERS))
        columns, index = [], {}
        for srv in servers:
            for v in variants:
                recs = [r for r in by[key][srv] if r.get("variant") == v]
                if recs:
                    index[(srv, v)] = len(columns)
                    columns.append((f"{srv} {v}", recs))
        first = servers[0] if servers else None
        ratio = (index.get((first, variants[1])), index.get((first, variants[0])))
        ratio = ratio if None not in ratio else None
        answers = sorted({f"{srv} {r.get('variant')}: {r.get('extension')}"
                          for srv in servers for r in by[key][srv] if r.get("extension")})
        r0 = columns[0][1][0] if columns else {}
        if scen == "broadcast-json" and r0:
            text_rate = f"{r0.get('conns'):,} subscribers, publisher {r0.get('rate'):,} msg/s × {r0.get('size'):,} B JSON. "
        else:
            text_rate = ""
        out.append(f"## {key}: {DESCR[scen]}" + (f" ({r0.get('conns')} connections)" if scen == "idle-deflate" and r0 else ""))
        out.append("")
        if scen == "idle-deflate":
            text = (f"The idle scenario with the server's compression on (`--compression on`) in both variants: "
                    f"`{variants[0]}` clients offer no extension, `{variants[1]}` clients negotiate permessage-deflate "
                    f"(`--deflate`). RSS per connection is what negotiating costs a held connection.")
        else:
            text = (text_rate + f"`{variants[0]}`: server `--compression off`, clients offer nothing; `{variants[1]}`: "
                    f"server `--compression on --compression-min-bytes {host.get('compression_min_bytes', '?')}`, "
                    f"clients negotiate permessage-deflate (`--deflate`)"
                    + (" and send their messages compressed" if scen == "echo-deflate" else "")
                    + ". Bodies are realistic JSON (`--payload json`). *payload bytes on the wire* = a message's "
                    f"payload as the socket carried it (compressed or not); *bytes read* adds frame headers and "
                    f"everything else read, per {'delivery' if scen == 'broadcast-json' else 'echo'}.")
        if ratio:
            text += f" Ratio = {first} {variants[1]} / {first} {variants[0]}."
        out.append(text)
        out.append("")
        out.extend(table(columns, METRICS[scen], chart, key, HEADLINE[scen], ratio=ratio,
                         ratio_label=f"{variants[1]} / {variants[0]}"))
        out.append("")
        if answers:
            out.append("Extension granted: " + "; ".join(f"{a}" for a in answers))
            out.append("")
    return out


def ordering_notes(recs):
    """Channel runs: ordering failures (any gap or reorder), runs whose
    order could not be checked, publishers that had to share a core."""
    out = []
    chan = sorted((r for r in recs if r.get("stream")), key=lambda r: (r["bench_scenario"], r["server_name"], r["round"]))
    name = lambda r: f"{section_key(r)}/{r['server_name']}#{r['round']}"
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
    """Horizontal bars: each scenario's headline metric for each column of
    its table (the servers; the setups of the cluster tables)."""
    w, left, bar_h, gap = 760, 250, 16, 14
    h = 40 + sum(max(2, len(r[5])) * bar_h + gap for r in rows) + 20
    palette = ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c"]
    out = []
    y = 40
    for scen, label, f, meds, better, heads in rows:
        top = max((m for m in meds if m is not None), default=0) or 1
        note = "higher is better" if better else "lower is better"
        out.append(f'<text x="10" y="{y + bar_h}" font-weight="bold">{scen}</text>')
        out.append(f'<text x="10" y="{y + 2 * bar_h}" fill="#555">{label} ({note})</text>')
        for i, head in enumerate(heads):
            m = meds[i]
            length = 0 if m is None else (w - left - 220) * m / top
            yy = y + i * bar_h
            out.append(f'<rect x="{left}" y="{yy}" width="{length:.1f}" height="{bar_h - 2}" fill="{palette[i % len(palette)]}"/>')
            out.append(f'<text x="{left + length + 4:.1f}" y="{yy + bar_h - 4}">{svg_escape(head)}: {fmt(f, m)}</text>')
        y += max(2, len(heads)) * bar_h + gap
    title = " vs ".join(SERVERS) + " (medians; bar length relative to the larger)"
    return svg_doc(w, h, title, out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_report.py results/<stamp>")
    main(sys.argv[1])
