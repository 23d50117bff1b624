"""bench/search.py end to end at toy size: every number it reports, as JSON (the 65k-label
numbers are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def test_a_toy_run_reports_start_times_and_search_latencies_as_json() -> None:
    toy = ["--labels", "300", "--queries", "12", "--embedding-layers", "1", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.search", *toy],
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["labels"] == 300
    assert set(results["start_s"]) == {"lexical", "semantic_cold", "semantic_warm"}
    assert set(results["search_ms"]) == {"semantic", "lexical", "activation_tiny"}
    for latency in results["search_ms"].values():
        assert 0 < latency["p50_ms"] <= latency["p99_ms"]
