"""Helpers every benchmark script shares: percentiles, plain-text tables, process memory and a
description of the machine the numbers came from."""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile, interpolating between ranks (`statistics` "inclusive" method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(
    seconds: Sequence[float], percentiles: Sequence[int] = PERCENTILES
) -> dict[str, float]:
    """`{"p50_ms": .., "p90_ms": .., ...}` of durations given in seconds, to 3 decimals."""
    return {f"p{p}_ms": round(1000 * percentile(seconds, p), 3) for p in percentiles}


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to fit; the first is left-aligned (a row label), the rest right-aligned."""
    cells = [[str(c) for c in columns], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def rss_mb() -> float:
    """This process's resident memory now, in MB (its peak where /proc is missing)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return peak_rss_mb()
    kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
    return round(kilobytes / 1024, 1)


def peak_rss_mb() -> float:
    """The most resident memory this process has used so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def machine_info(packages: Sequence[str] = ()) -> dict[str, object]:
    """CPU, cores, memory, OS and Python, plus the versions of `packages`."""
    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def describe_machine(info: dict[str, object]) -> str:
    return ", ".join(f"{key} {value}" for key, value in info.items())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 1024**3, 1)
