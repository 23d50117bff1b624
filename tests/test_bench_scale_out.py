"""bench/scale_out.py end to end at toy size: SQLite and two processes on PostgreSQL."""

from __future__ import annotations

import json

from bench.scale_out import Options, measure, parse_options, render
from tests.support.fake_ember import Latency

TOY = Options(
    channels=(4,), processes=(2,), seconds=0.5, reply_tokens=5, latency=Latency(0.02, 500)
)


def test_a_toy_run_measures_both_databases_and_prints_json_and_a_table(postgres_server):
    report = json.loads(json.dumps(measure(TOY, "toy")))
    sqlite, postgres = report["rows"]
    assert (sqlite["database"], sqlite["processes"]) == ("sqlite", 1)
    assert (postgres["database"], postgres["processes"]) == ("postgresql", 2)
    for row in (sqlite, postgres):
        assert row["turns"] >= 4 and row["turns_per_s"] > 0
        assert 0 <= row["overhead_p50_ms"] <= row["overhead_p99_ms"]
    assert len(postgres["cpu_ms_per_turn"]) == 2 and postgres["database_cpu_ms_per_turn"] > 0
    table = render(report)
    assert "PostgreSQL CPU ms/turn" in table and "postgresql" in table
    assert parse_options(["--channels", "10", "--processes", "1,3"])[0].processes == (1, 3)
