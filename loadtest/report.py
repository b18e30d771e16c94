#!/usr/bin/env python3
"""Turns the JSON summaries that loadtest/run-benchmarks collected into the results tables of
docs/benchmarks.md (medians where a benchmark ran more than once), rewriting only what stands
between each table's markers: <!-- BEGIN name --> ... <!-- END name -->. Standard library only.

Usage: loadtest/report.py RESULTS_DIR DOC [SECTION ...]

With SECTIONs (machine, throughput, floor, latency, storm, compare, targets, pull, goose), only
those tables are rewritten and the others are left as they stand, whatever RESULTS_DIR holds.
"""

import glob
import json
import os
import platform
import re
import statistics
import sys


def runs(results, name):
    """Every summary of benchmark `name` (files NAME-1.json, NAME-2.json, ...)."""
    found = []
    exact = re.compile(rf"^{re.escape(name)}-\d+\.json$")
    paths = [path for path in glob.glob(os.path.join(results, f"{name}-*.json")) if exact.match(os.path.basename(path))]
    for path in sorted(paths):
        with open(path) as file:
            lines = [line for line in file.read().splitlines() if line.strip().startswith("{")]
        if lines:
            found.append(json.loads(lines[-1]))
    return found


def median(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def dig(summary, path):
    for key in path.split("."):
        summary = summary.get(key) if isinstance(summary, dict) else None
    return summary


def med(summaries, path):
    return median([dig(summary, path) for summary in summaries])


def fmt(value, digits=0):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command(results, name):
    """The command run-benchmarks ran for benchmark `name` (from NAME.cmd), if it recorded one."""
    path = os.path.join(results, f"{name}.cmd")
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return file.read().strip()


def commands(results, named):
    """A list of the commands behind a table's rows: [(name, label), ...]."""
    lines = []
    for name, label in named:
        text = command(results, name)
        if text and runs(results, name):
            lines.append(f"- {label}: `{text}`")
    return "\n\nCommands:\n\n" + "\n".join(lines) if lines else ""


def machine(results):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo") as file:
            kib = int(file.readline().split()[1])
            memory = f"{kib / 1048576:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    notes = {}
    notes_path = os.path.join(results, "machine.json")
    if os.path.exists(notes_path):
        with open(notes_path) as file:
            notes = json.load(file)
    # The 1-minute load average at the start and end of every run, from the summaries.
    loads = []
    for path in glob.glob(os.path.join(results, "*-[0-9]*.json")):
        with open(path) as file:
            lines = [line for line in file.read().splitlines() if line.strip().startswith("{")]
        for line in lines[-1:]:
            try:
                summary = json.loads(line)
            except json.JSONDecodeError:
                continue  # goose's own reports span many lines
            for entry in summary.get("loadavg", []):
                try:
                    loads.append(float(entry.split()[0]))
                except (ValueError, IndexError):
                    pass
    spread = (f"{min(loads):.1f} to {max(loads):.1f}, median {statistics.median(loads):.1f}"
              if loads else "unknown")
    rows = [
        ["CPU", f"{os.cpu_count()} × {cpu}"],
        ["memory", memory],
        ["kernel", platform.release()],
        ["nats-server", notes.get("nats_server", "unknown")],
        ["1-minute load average at the start and end of each run (2 cores)", spread],
        ["last run of run-benchmarks", notes.get("date", "unknown")],
    ]
    if notes.get("only"):
        rows.append(["benchmarks in that run (the other tables keep earlier runs' figures)", notes["only"]])
    return table(["what", "value"], rows)


THROUGHPUT_RUNS = [("throughput-1type", "one target device type", 0.40),
                   ("throughput-4types", "four device types", 0.20),
                   ("throughput-1type-30k", "one target device type", 0.40),
                   ("throughput-4types-30k", "four device types", 0.20)]


def throughput(results):
    rows, named = [], []
    for name, label, target in THROUGHPUT_RUNS:
        found = runs(results, name)
        if not found:
            continue
        ratio = med(found, "ratio")
        members, published = med(found, "members"), med(found, "published")
        named.append((name, f"{label}, {fmt(members)} members"))
        each = f"{published / members:,.0f}" if members and published else "–"
        rows.append([label, fmt(members), each, len(found), fmt(med(found, "events_per_sec")),
                     fmt(med(found, "notifications_per_sec")), fmt(med(found, "raw_msgs_per_sec")),
                     fmt(ratio, 3), f"≥ {target:.2f}", "met" if ratio and ratio >= target else "**not met**",
                     fmt(med(found, "cpu_us_per_event.workers")), fmt(med(found, "cpu_us_per_event.hub")),
                     sum(1 for summary in found if summary.get("ok"))])
    if not rows:
        return "(not run)"
    return table(["run", "members", "events per member", "runs", "events/s", "notifications/s",
                  "raw JetStream msgs/s (same run)", "ratio", "target", "", "worker CPU µs/event",
                  "hub CPU µs/event", "runs complete"], rows) + commands(results, named)


LATENCY_RUNS = [("latency-1000", "1,000/s"), ("latency-quarter", "¼ of max"), ("latency-half", "½ of max"),
                ("latency-three-quarters", "¾ of max")]


def latency(results):
    rows = []
    for name, label in LATENCY_RUNS:
        found = runs(results, name)
        if not found:
            continue
        row = [label, len(found), fmt(med(found, "publish_per_sec")), fmt(med(found, "events_per_sec"))]
        row += [fmt(med(found, f"latency.{key}"), 2) for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]]
        row.append(sum(1 for summary in found if summary.get("ok")))
        if name == "latency-half":
            p50, p99 = med(found, "latency.p50_ms"), med(found, "latency.p99_ms")
            row.append("met" if p50 is not None and p50 <= 2 and p99 <= 10 else "**not met** (p50 ≤ 2, p99 ≤ 10 ms)")
        else:
            row.append("")
        rows.append(row)
    if not rows:
        return "(not run)"
    return table(["offered load", "runs", "published/s", "delivered events/s", "p50 ms", "p90 ms", "p99 ms",
                  "p99.9 ms", "max ms", "runs complete", "target"], rows) + commands(results, LATENCY_RUNS)


def storm(results):
    rows = []
    for name, label in [("storm-3000", "one each"), ("storm", "one each"),
                        ("storm-retry", "up to 5, backoff with jitter")]:
        found = runs(results, name)
        if not found:
            continue
        rows.append([fmt(med(found, "devices")), label, len(found), fmt(med(found, "connected")),
                     fmt(med(found, "failed_first_attempt")), fmt(med(found, "failed")),
                     fmt(med(found, "connects_per_sec")), fmt(med(found, "storm_secs"), 2),
                     fmt(med(found, "connect.p50_ms"), 1), fmt(med(found, "connect.p99_ms"), 1),
                     fmt(med(found, "time_to_connected.p99_ms"), 1), fmt(med(found, "edge_kib_per_device"), 1)])
    if not rows:
        return "(not run)"
    return table(["devices at once", "attempts", "runs", "connected", "refused or timed out at first",
                  "never connected", "connects/s", "storm s", "connect p50 ms", "connect p99 ms",
                  "start → connected p99 ms", "edge KiB per connected device"], rows) + commands(
        results, [("storm-3000", "3,000"), ("storm", "5,000"), ("storm-retry", "5,000 with retries")])


def compare(results):
    found = runs(results, "compare")
    if not found:
        return "(not run)"
    rows = []
    for label, key in [("device on the edge (wss, reno-device)", "latency"),
                       ("subscriber on the hub (nats, reno's account)", "hub_latency")]:
        rows.append([label, len(found)] + [fmt(med(found, f"{key}.{field}"), 2)
                                           for field in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]])
    return table(["receiver", "runs", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"], rows) + commands(
        results, [("compare", "both receivers, one run")])


def targets(results):
    rows = []
    order = runs(results, "order")
    if order:
        inversions = med(order, "delivery.inversions")
        rows.append(["per-member order, 3 workers, bursts of 1,000 events per member", "0 inversions",
                     f"{fmt(inversions)} inversions in {fmt(med(order, 'delivery.delivered'))} notifications "
                     f"({fmt(med(order, 'events_per_sec'))} events/s)",
                     "met" if inversions == 0 else "**not met**"])
    kill = runs(results, "kill")
    if kill:
        recovery = med(kill, "kill.recovery_secs")
        rows.append(["a SIGKILLed worker's in-flight events delivered by the others", "≤ 5 s",
                     f"every event published before the kill delivered {fmt(recovery, 1)} s after it; "
                     f"{fmt(med(kill, 'kill.later_than_5s'))} later than 5 s; published around the kill: worst "
                     f"{fmt(med(kill, 'kill.worst_latency_near_kill_ms'))} ms, "
                     f"{fmt(med(kill, 'kill.slower_than_1s_near_kill'))} slower than 1 s; "
                     f"missing {fmt(med(kill, 'delivery.missing'))}",
                     "met" if recovery is not None and recovery <= 5 else "**not met**"])
    hostile = runs(results, "hostile")
    if hostile:
        peak = median([max(summary.get("worker_peak_rss_mib") or [0]) for summary in hostile])
        rows.append(["worker memory under hostile valid-size input (64 KiB, full concurrency)", "≤ 256 MB",
                     f"peak RSS {fmt(peak, 0)} MiB over {fmt(med(hostile, 'events'))} envelopes "
                     f"({fmt(med(hostile, 'events_per_sec'))}/s)",
                     "met" if peak is not None and peak * 1.048576 <= 256 else "**not met**"])
    for suffix, documents in MEMBER_RUNS:
        small, large = runs(results, f"members-1k{suffix}"), runs(results, f"members-1m{suffix}")
        if not (small and large):
            continue
        small_rate, large_rate = med(small, "events_per_sec"), med(large, "events_per_sec")
        change = (large_rate - small_rate) / small_rate if small_rate else None
        small_ratio, large_ratio = med(small, "ratio"), med(large, "ratio")
        rows.append([f"throughput, 1k vs 1M member ids ({documents})", "within 10%",
                     f"{fmt(small_rate)} vs {fmt(large_rate)} events/s ({change:+.0%}); of raw in the same run "
                     f"{fmt(small_ratio, 3)} vs {fmt(large_ratio, 3)}; worker µs/event "
                     f"{fmt(med(small, 'cpu_us_per_event.workers'))} vs {fmt(med(large, 'cpu_us_per_event.workers'))}, "
                     f"hub {fmt(med(small, 'cpu_us_per_event.hub'))} vs {fmt(med(large, 'cpu_us_per_event.hub'))}"
                     if change is not None else "–",
                     "met" if change is not None and abs(change) <= 0.10 else "**not met**"])
    member_commands = [(f"members-{size}{suffix}", f"{size} member ids, {documents}")
                       for suffix, documents in MEMBER_RUNS for size in ["1k", "1m"]]
    if not rows:
        return "(not run)"
    return table(["target", "wanted", "measured", ""], rows) + commands(
        results, [("order", "order"), ("kill", "SIGKILLed worker"), ("hostile", "hostile input")] + member_commands)


MEMBER_RUNS = [("", "documents as they grow"), ("-1entry", "documents of one entry")]


FLOOR_ORDERED = "one event in flight per partition, as reno's per-member order needs"
FLOOR_AHEAD = ("1,000 events handed out ahead per partition, each lane still taking one at a time "
               "(no per-member order across workers)")
FLOOR_RUNS = [("floor", FLOOR_ORDERED), ("floor-kept", FLOOR_ORDERED),
              ("floor-unordered", FLOOR_AHEAD), ("floor-unordered-kept", FLOOR_AHEAD),
              ("floor-unordered-kept-4types", FLOOR_AHEAD + ", four pushes per event (an event for four device types)"),
              ("floor-concurrent", "one partition, 1,000 events handed out ahead and handled at once (no order at all)")]
FLOOR_STEPS = [("queue", "queue: publish, take, ack"), ("write", "+ one document write per event"),
               ("read_write", "+ read before the write, and a push: all a reno worker does"),
               ("kept_write", "queue + a write conditional on the revision kept from the member's last write, and a push, "
                              "without the read")]


RENO_FLOOR_ROW = "reno itself (the throughput table's one-type run, 30,000 members)"


def floor(results, standing=""):
    """`standing`: the table as it stands, whose reno row is kept when the throughput runs' results
    are not in RESULTS_DIR (the floor rerun alone)."""
    rows, named = [], []
    for name, label in FLOOR_RUNS:
        found = runs(results, name)
        if not found:
            continue
        named.append((name, label))
        for step, step_label in FLOOR_STEPS:
            # This step's summary in each run; none when this configuration does not run it.
            entries = [entry for summary in found for entry in summary.get("steps", []) if entry.get("step") == step]
            if not entries:
                continue
            complete = sum(1 for entry in entries if entry.get("complete"))
            rows.append([label, step_label, len(found), fmt(med(entries, "events_per_sec")),
                         fmt(med(found, "raw_msgs_per_sec")), fmt(med(entries, "ratio"), 3),
                         fmt(med(entries, "hub_cpu_us_per_event"), 1), complete])
    reno = runs(results, "throughput-1type-30k")
    if rows and reno:
        rows.append([RENO_FLOOR_ROW, "everything", len(reno),
                     fmt(med(reno, "events_per_sec")), fmt(med(reno, "raw_msgs_per_sec")), fmt(med(reno, "ratio"), 3),
                     fmt(med(reno, "cpu_us_per_event.hub"), 1), sum(1 for summary in reno if summary.get("ok"))])
    elif rows:
        kept = [line for line in standing.splitlines() if line.startswith(f"| {RENO_FLOOR_ROW} |")]
        rows += [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in kept[:1]]
    if not rows:
        return "(not run)"
    return table(["consumers", "work per event", "runs", "events/s", "raw JetStream msgs/s (same run)", "ratio",
                  "hub CPU µs/event", "runs complete"], rows) + commands(results, named)


PULL_RUNS = [("pull-10k", "10k entries"), ("pull-10m", "10M entries"), ("pull-10m-warm", "10M entries"),
             ("pull-10m-warm-flood", "10M entries"), ("pull-10k-cold", "10k entries"),
             ("pull-10m-cold", "10M entries")]
# The flood's runs: answered by the pull service, and by the hub alone (no pull service).
FLOOD_RUNS = [("pull-10k", "10k entries, with the flood"),
              ("pull-10k-hub", "10k entries, with the flood answered by the hub alone"),
              ("pull-10m", "10M entries, with the flood"),
              ("pull-10m-hub", "10M entries, with the flood answered by the hub alone"),
              ("pull-10m-warm-flood", "10M entries, with the flood on a history kept warm")]


def history_label(found):
    return f"{fmt(med(found, 'history_entries'))} ({fmt(med(found, 'members'))} members × {fmt(med(found, 'entries'))})"



def pull(results):
    latency_rows, flood_rows = [], []
    for name, _ in PULL_RUNS:
        found = runs(results, name)
        if not found:
            continue
        idle = med(found, "idle_secs")
        p99 = med(found, "pulls.latency.p99_ms")
        checked = sum(dig(summary, "pulls.latency.count") or 0 for summary in found)
        wrong = sum((dig(summary, "pulls.wrong") or 0) + (dig(summary, "pulls.failed") or 0) for summary in found)
        warm_reads = med(found, "warm.reads")
        measured = ("right after the fill" if not idle else f"after {fmt(idle)} s idle") + (
            f", then {fmt(warm_reads)} direct gets warming the hub's cache" if warm_reads else "") + (
            " (the runs of the flood kept warm)" if med(found, "flood.keep_warm_rate") else "")
        latency_rows.append([history_label(found), measured, len(found)]
                            + [fmt(med(found, f"pulls.latency.{key}"), 2)
                               for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]]
                            + [fmt(med(found, "pulls.server_gets.p99_ms"), 2),
                               fmt(med(found, "pulls.first_pull_ms"), 1), f"{checked:,} ({wrong:,})",
                               fmt(med(found, "fill.documents_per_sec")),
                               fmt((med(found, "fill.history_bytes") or 0) / 1048576),
                               "met" if p99 is not None and p99 <= 5 else "**not met**"])
    for name, _ in FLOOD_RUNS:
        flooded = [summary for summary in runs(results, name) if summary.get("flood")]
        if not flooded:
            continue
        ratio = med(flooded, "flood.ratio")
        # The hub alone answered these pulls: a reference for the runs with the pull service.
        by_hub = dig(flooded[0], "flood.via") == "hub"

        def phase(summary, number, path):
            phases = dig(summary, "flood.phases") or []
            return dig(phases[number], path) if len(phases) > number else None

        def phase_med(number, path):
            return median([phase(summary, number, path) for summary in flooded])

        def without_med(path):
            # The phases without pulls (before and after), as the events/s without pulls are.
            means = []
            for summary in flooded:
                values = [phase(summary, number, path) for number in (0, 2)]
                values = [value for value in values if value is not None]
                means.append(sum(values) / len(values) if values else None)
            return median(means)

        def without_with(path):
            return f"{fmt(without_med(path))} / {fmt(phase_med(1, path))}"

        answered_by = "the hub alone (direct gets)" if by_hub else "the pull service"
        keep_warm = med(flooded, "flood.keep_warm_rate")
        if keep_warm:
            answered_by += f", the history kept warm by {fmt(keep_warm)} direct gets/s in every phase"
        flood_rows.append([history_label(flooded), answered_by,
                           len(flooded),
                           fmt(med(flooded, "flood.events_per_phase")),
                           fmt(med(flooded, "flood.events_per_sec_without_pulls")),
                           fmt(med(flooded, "flood.events_per_sec_with_pulls")), fmt(ratio, 3),
                           fmt(phase_med(1, "pulls.per_sec")), fmt(phase_med(1, "pulls.latency.p99_ms"), 2),
                           fmt(phase_med(1, "pulls.failed")),
                           without_with("cpu_us_per_event.hub"), without_with("cpu_us_per_event.workers"),
                           without_with("cpu_us_per_event.load_generator"),
                           "none" if by_hub else fmt(phase_med(1, "pull_service_us_per_pull")),
                           ("reference (no pull service)" if by_hub
                            else "met" if ratio is not None and ratio >= 0.90 else "**not met**")])
    if not latency_rows and not flood_rows:
        return "(not run)"
    text = table(["entries in history", "measured", "runs", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
                  "the hub's own direct get, p99 ms", "first pull ms", "pages checked (wrong or failed)", "fill documents/s", "history MiB",
                  "p99 ≤ 5 ms"], latency_rows)
    if flood_rows:
        text += "\n\n" + table(["entries in history", "pulls answered by", "runs", "events per phase",
                                 "workers' events/s without pulls", "with the pulls", "ratio", "pulls/s",
                                 "pull p99 ms in the flood", "pulls failed", "hub µs/event without / with",
                                 "worker µs/event without / with", "load generator µs/event without / with",
                                 "pull service µs/pull", "within 10%"], flood_rows)
    named = (FLOOD_RUNS + [(name, f"{label}, after warming the hub's cache") for name, label in PULL_RUNS
                           if name.endswith("-warm")]
             + [(name, f"{label}, after 130 s idle") for name, label in PULL_RUNS if name.endswith("-cold")])
    return text + commands(results, named)


def goose(results):
    rows = []
    for scenario, label in [("events", "POST /v1/events (service token, JSON)"),
                            ("pull", "GET /v1/pull (device token)")]:
        reports = []
        for path in sorted(glob.glob(os.path.join(results, f"goose-{scenario}-[0-9]*.json"))):
            with open(path) as file:
                reports.append(json.load(file))
        if not reports:
            continue
        name = "/v1/events" if scenario == "events" else "/v1/pull"

        def metric(report, table_name, key):
            for row in report.get(table_name, []):
                if row.get("name") == name:
                    return row.get(key)
            return None

        row = [label, len(reports)]
        row.append(fmt(median([metric(report, "raw_request_metrics", "requests_per_second") for report in reports])))
        row.append(fmt(median([metric(report, "raw_request_metrics", "response_time_average") for report in reports]), 1))
        for key in ["percentile_50", "percentile_90", "percentile_99", "percentile_100"]:
            row.append(fmt(median([metric(report, "raw_response_metrics", key) for report in reports])))
        row.append(fmt(median([metric(report, "raw_request_metrics", "number_of_failures") for report in reports])))
        rows.append(row)
    if not rows:
        return "(not run)"
    return table(["scenario", "runs", "requests/s", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "failures"],
                 rows)


def main():
    results, doc, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(doc) as file:
        text = file.read()
    sections = {
        "machine": machine,
        "throughput": throughput,
        "floor": floor,
        "latency": latency,
        "storm": storm,
        "compare": compare,
        "targets": targets,
        "pull": pull,
        "goose": goose,
    }
    unknown = [name for name in wanted if name not in sections]
    if unknown:
        sys.exit(f"report.py: no table named {', '.join(unknown)}; tables: {', '.join(sections)}")
    for name, section in sections.items():
        if wanted and name not in wanted:
            continue
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        standing = pattern.search(text)
        content = (section(results, standing.group(0)) if name == "floor" and standing
                   else section(results))
        if content == "(not run)":
            # Nothing of it in RESULTS_DIR (a partial run, or results gone): keep what stands.
            continue
        text = pattern.sub(lambda match: match.group(1) + content + "\n" + match.group(2), text)
    with open(doc, "w") as file:
        file.write(text)


if __name__ == "__main__":
    main()
