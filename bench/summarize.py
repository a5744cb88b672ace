"""Prints a pytest-benchmark JSON as one table per case: each impl's median and its speed-up
over the slowest impl of the case.  Usage: python bench/summarize.py RESULT.json [...]"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def rows(path):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        params = b.get("params") or {}
        groups[b.get("group") or params.get("case", b["name"])].append(
            (params.get("impl", b["name"]), b["stats"]["median"])
        )
    return data.get("machine_info", {}).get("trp", {}), groups


def main(paths):
    for path in paths:
        machine, groups = rows(path)
        print(f"# {path}: {machine}")
        for case in sorted(groups):
            entries = sorted(groups[case], key=lambda e: e[1])
            slowest = max(t for _, t in entries)
            cells = "  ".join(f"{impl} {t * 1e3:.3f} ms ({slowest / t:.1f}x)" for impl, t in entries)
            print(f"{case:<34} {cells}")


if __name__ == "__main__":
    main(sys.argv[1:])
