#!/usr/bin/env python3
"""Plots publish → device latency (p50, p99, p99.9) against offered load from the latency runs that
loadtest/run-benchmarks collected, into a PNG. Needs matplotlib (run-benchmarks makes a venv for it).

Usage: loadtest/plot.py RESULTS_DIR OUTPUT.png
"""

import glob
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def summaries(results):
    found = []
    for path in glob.glob(os.path.join(results, "latency-*-[0-9]*.json")):
        with open(path) as file:
            lines = [line for line in file.read().splitlines() if line.strip().startswith("{")]
        if lines:
            found.append(json.loads(lines[-1]))
    return found


def main():
    results, output = sys.argv[1], sys.argv[2]
    by_rate = {}
    for summary in summaries(results):
        by_rate.setdefault(float(summary["rate"]), []).append(summary)
    if not by_rate:
        sys.exit("plot: no latency runs in " + results)
    # In order of the load actually offered (two targets may land close together).
    rates = sorted(by_rate, key=lambda rate: statistics.median(run["publish_per_sec"] for run in by_rate[rate]))
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label, style in [("p50_ms", "p50", "o-"), ("p99_ms", "p99", "s-"), ("p999_ms", "p99.9", "^-")]:
        medians = [statistics.median(run["latency"][key] for run in by_rate[rate]) for rate in rates]
        offered = [statistics.median(run["publish_per_sec"] for run in by_rate[rate]) for rate in rates]
        axes.plot(offered, medians, style, label=f"{label} (median of runs)")
        for rate in rates:
            for run in by_rate[rate]:
                axes.plot(run["publish_per_sec"], run["latency"][key], ".", color="grey", alpha=0.5)
    axes.axhline(2, color="green", linestyle=":", linewidth=1, label="target p50 at ½ max: 2 ms")
    axes.axhline(10, color="red", linestyle=":", linewidth=1, label="target p99 at ½ max: 10 ms")
    axes.set_yscale("log")
    axes.set_xlabel("offered load (events published per second)")
    axes.set_ylabel("publish → device latency (ms, log scale)")
    first = by_rate[rates[0]][0]
    axes.set_title(
        f"reno: publish → websocket device through one edge\n"
        f"{first['devices']} devices, {len(first['device_types'])} device type(s), {first['workers']} worker(s)"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output)


if __name__ == "__main__":
    main()
