"""bench/label_memory.py runs and reports what BENCHMARKS.md quotes (at a small size: the numbers
themselves come from the bench, never from a timed test)."""

from __future__ import annotations

import json

from bench import label_memory


def test_the_memory_bench_reports_a_flat_trace_and_the_state_size(capsys):
    assert label_memory.main(["--features", "300", "--tokens", "3000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    documents = 3000 // label_memory.WORDS_PER_DOCUMENT  # one token a word, windows of 32
    assert result["features"] == 300
    assert result["windows"] == documents * -(-label_memory.WORDS_PER_DOCUMENT // 32)
    assert [point["share"] for point in result["rss_trace"]][-1] == 1.0
    # 300 features x 30 windows x 32 tokens x 6 bytes, plus scores, ids and the pool
    assert 1.6 <= result["state_mb"] <= 2.0
    assert result["within_limit"] and result["peak_rss_mb"] >= result["baseline_rss_mb"]
