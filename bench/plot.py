#!/usr/bin/env python3
"""Draw PNG plots from the tables in BENCHMARKS.md.

Usage: /usr/bin/python3 bench/plot.py BENCHMARKS.md bench/plots
Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def tables(text):
    """Yield (section title, header, rows) for every markdown table."""
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            yield section, header, rows
            continue
        i += 1


def ms(cell):
    """'6.4 ms (5.2 ms–10.1 ms)' -> (median, min, max) in ms."""
    nums = [float(x) for x in re.findall(r"([0-9.]+) ms", cell)]
    return (nums + [0, 0, 0])[:3]


def bar(path, title, labels, series, ylabel, log=False):
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / max(1, len(series))
    for k, (name, values, errs) in enumerate(series):
        xs = [j + k * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=name, yerr=errs if errs else None, capsize=3)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    text = open(src, encoding="utf-8").read()
    for section, header, rows in tables(text):
        if section.startswith("Drain-detection delay"):
            peers = header[1:]
            labels = [r[0] for r in rows]
            series = []
            for p, name in enumerate(peers):
                vals = [ms(r[p + 1]) for r in rows]
                med = [v[0] for v in vals]
                errs = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
                series.append((name, med, errs))
            bar(os.path.join(out, "drain-delay.png"), "Last response to process exit (lower is better)",
                labels, series, "ms (log scale)", log=True)
        elif section.startswith("Overhead"):
            names = [r[0] for r in rows]
            h1 = [float(r[2]) for r in rows]
            h2 = [float(r[5]) for r in rows]
            bar(os.path.join(out, "overhead.png"), "Requests/s relative to bare hyper-util (higher is better)",
                names, [("HTTP/1.1", h1, None), ("HTTP/2", h2, None)], "ratio")
        elif section.startswith("Restart under load") and "run" in header:
            idx = {h: n for n, h in enumerate(header)}
            classes = ["connect", "read", "write", "timeout", "non-2xx"]
            def who(run):
                return f"lameduck, {run}" if run in ("steady", "restarting") else run

            labels = [f"{who(r[idx['run']])}, c{r[idx['connections']]}" for r in rows]
            failed = [sum(int(r[idx[c]] or 0) for c in classes if c in idx) for r in rows]
            bar(os.path.join(out, "restart-failures.png"), "Failed requests during restarts (lower is better)",
                labels, [("failed requests", [f + 0.5 for f in failed], None)], "failed requests + 0.5 (log scale)", log=True)


if __name__ == "__main__":
    main()
