"""bench/real_size.py end to end at toy size on the CPU: it serves, measures every part, and its
JSON has every number (the full size runs on a GPU: see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.real_size import GENERATION, build_tokenizer, model_config, parse_args

ROOT = Path(__file__).resolve().parent.parent
TOY = ["--device", "cpu", "--layers", "2", "--hidden", "256", "--sae-width", "4096"]
QUICK = ["--max-tokens", "6", "--streams", "3", "--inspect-words", "24", "--repeats", "1"]


def numbers(tree: object, path: str = "results") -> dict[str, object]:
    """Every leaf under `tree`, by its dotted path."""
    if isinstance(tree, dict):
        return {
            leaf: value
            for key, child in tree.items()
            for leaf, value in numbers(child, f"{path}.{key}").items()
        }
    return {path: tree}


def test_a_toy_run_on_the_cpu_reports_every_number_as_json() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.real_size", *TOY, *QUICK, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    results = report["results"]
    expected = {"parameters_b", "load_s", "server_start_s", "memory_after_load_gib"}
    expected |= {"memory_peak_gib", "features", *(name for name, _, _ in GENERATION)}
    assert set(results) == expected
    leaves = numbers(results)
    assert all(isinstance(value, int | float) for value in leaves.values()), leaves
    assert all(value >= 0 for value in leaves.values())
    assert results["solo_plain"]["tokens"] == 6  # one chunk per token with this tokenizer
    assert results["concurrent_steered"]["tokens"] == 3 * 6
    assert results["features"]["compute_features"]["p50_ms"] > 0
    assert report["settings"]["layer"] == 1 and report["memory_kind"] == "process RSS"
    assert "serving at http://127.0.0.1:" in run.stderr  # progress goes to stderr


def test_the_full_size_is_llama_3_1_8b_and_its_ids_all_decode() -> None:
    full = model_config(parse_args(["--device", "cpu"]))
    assert (full.hidden_size, full.num_hidden_layers, full.intermediate_size) == (4096, 32, 14336)
    assert (full.num_attention_heads, full.num_key_value_heads) == (32, 8)
    assert parse_args(["--device", "cpu"]).layer == 19
    toy = model_config(parse_args(TOY))
    assert (toy.hidden_size, toy.num_attention_heads, toy.num_key_value_heads) == (256, 2, 1)
    assert toy.intermediate_size == 896
    tokenizer = build_tokenizer(full.vocab_size)
    assert len(tokenizer) == full.vocab_size == 128256
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a story."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id == 128000  # Llama 3's special ids
    assert max(ids) < full.vocab_size and tokenizer.unk_token_id not in ids
    assert tokenizer.decode([5000, 90000]) == "w5000 w90000"
