"""The preset catalogue and SAELens release/id names: every fact agrees with SAELens' catalogue
(our pinned extract of it, and the installed sae-lens when there is one), names resolve to the
files to download without the network, and `serve --list-presets` prints them all."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from server import cli
from server.model import saelens_releases
from server.model.catalog import CATALOG
from server.model.presets import PRESETS, build_tiny
from server.model.saelens_releases import EXAMPLE, extract, looks_like_release, pinned, resolve
from tests.support.sae_formats import Weights, write_gemma_scope_2, write_hub_cache

# What SAELens' own loaders say about the Goodfire files (get_goodfire_config_from_hf): they are
# not in pretrained_saes.yaml, so the check is against these.
GOODFIRE_SIZES = {
    "goodfire-llama-3.1-8b-instruct": (4096, 65536),
    "goodfire-llama-3.3-70b-instruct": (8192, 65536),
}
WIDTHS = {"16k": 16384, "65k": 65536, "262k": 262144, "1m": 1048576}


# ---- the catalogue agrees with SAELens ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CATALOG))
def test_preset_facts_agree_with_the_pinned_saelens_table(name: str) -> None:
    entry = CATALOG[name]
    release = pinned()["releases"][entry.release]  # the release exists
    saes = {sae["id"]: sae for sae in release["saes"]}
    assert entry.sae_id in saes
    assert entry.model == release["model"]
    layer = int(re.match(r"layer_(\d+)", entry.sae_id).group(1))  # type: ignore[union-attr]
    assert entry.layer == layer < entry.layers
    listed = saes[entry.sae_id]["neuronpedia"]
    assert entry.neuronpedia == (tuple(listed.split("/", 1)) if listed else None)
    source = entry.source()
    assert (source.model, source.layer, source.format) == (entry.model, entry.layer, entry.format)
    assert source.neuronpedia == entry.neuronpedia
    if entry.format == "gemma-scope-2":
        width = re.search(r"width_(\w+?)_", entry.sae_id).group(1)  # type: ignore[union-attr]
        assert entry.d_sae == WIDTHS[width]
        assert release["conversion_func"] == "gemma_3"
    else:
        assert (entry.d_model, entry.d_sae) == GOODFIRE_SIZES[entry.release]
    assert entry.description and entry.parameters > 0
    assert 0 < entry.memory_bf16_gib < entry.memory_cpu_gib


def test_catalogue_names_the_pairs_the_issue_asks_for() -> None:
    assert {
        "gemma-3-270m-it",
        "gemma-3-1b-it",
        "gemma-3-4b-it",
        "gemma-3-12b-it",
        "gemma-3-27b-it",
        "llama-3.1-8b",
        "llama-3.3-70b",
    } <= set(CATALOG)
    assert CATALOG["gemma-3-270m-it"].sae == EXAMPLE
    assert CATALOG["gemma-3-270m-it"].neuronpedia == ("gemma-3-270m-it", "12-gemmascope-2-res-16k")
    assert CATALOG["llama-3.1-8b"].neuronpedia == ("llama3.1-8b-it", "19-resid-post-gf")
    # SAELens lists no Neuronpedia labels for any Gemma Scope 2 12B SAE
    assert CATALOG["gemma-3-12b-it"].neuronpedia is None
    twelve = pinned()["releases"]["gemma-scope-2-12b-it-res"]["saes"]
    assert not any(sae["neuronpedia"] for sae in twelve)


def test_presets_are_the_catalogue_plus_tiny() -> None:
    assert set(PRESETS) == {"tiny", *CATALOG}
    for name, entry in CATALOG.items():
        preset = PRESETS[name]
        assert (preset.model, preset.sae, preset.layer) == (
            entry.model,
            entry.source().spec,
            entry.layer,
        )
        assert preset.description == entry.description


def test_pinned_table_says_where_it_comes_from() -> None:
    data = pinned()
    assert data["sae_lens_version"] == "6.54.12"
    assert set(data["releases"]) == {entry.release for entry in CATALOG.values()}
    for release in data["releases"].values():
        assert {"model", "repo_id", "conversion_func", "saes"} <= set(release)
        assert all({"id", "path", "l0", "neuronpedia"} == set(sae) for sae in release["saes"])


def test_refresh_writes_what_it_reads(tmp_path: Path) -> None:
    """The extract of a catalogue shaped like SAELens' round-trips through the pinned format."""
    catalogue = {
        name: {**release, "links": {"model": "x"}} for name, release in pinned()["releases"].items()
    }
    again = extract(catalogue, list(catalogue), pinned()["sae_lens_version"])
    assert again == pinned()
    text = saelens_releases.dumps(again)
    assert yaml.safe_load(text) == pinned()  # JSON is YAML


@pytest.mark.skipif(
    importlib.util.find_spec("sae_lens") is None,
    reason="sae-lens is not installed: the pinned table is checked against it only where it is",
)
def test_pinned_table_equals_the_installed_saelens_catalogue() -> None:
    import sae_lens

    yaml_path = Path(sae_lens.__file__).parent / "pretrained_saes.yaml"
    catalogue = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    installed = extract(catalogue, list(pinned()["releases"]), "installed")
    assert installed["releases"] == pinned()["releases"], (
        f"sae-lens {importlib.metadata.version('sae-lens')} differs from the pinned table; refresh "
        f"it: python -m server.model.saelens_releases --refresh {yaml_path} --version ..."
    )


# ---- --sae release/id --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec", "layer", "model", "neuronpedia"),
    [
        (
            EXAMPLE,
            "hf:google/gemma-scope-2-270m-it/resid_post/layer_12_width_16k_l0_medium/"
            "params.safetensors",
            12,
            "google/gemma-3-270m-it",
            ("gemma-3-270m-it", "12-gemmascope-2-res-16k"),
        ),
        (
            "gemma-scope-2-12b-it-res/layer_41_width_262k_l0_small",
            "hf:google/gemma-scope-2-12b-it/resid_post/layer_41_width_262k_l0_small/"
            "params.safetensors",
            41,
            "google/gemma-3-12b-it",
            None,
        ),
        (
            "goodfire-llama-3.1-8b-instruct/layer_19",
            "hf:Goodfire/Llama-3.1-8B-Instruct-SAE-l19/Llama-3.1-8B-Instruct-SAE-l19.pth",
            19,
            "meta-llama/Llama-3.1-8B-Instruct",
            ("llama3.1-8b-it", "19-resid-post-gf"),
        ),
        (
            "goodfire-llama-3.3-70b-instruct/layer_50",
            "hf:Goodfire/Llama-3.3-70B-Instruct-SAE-l50/Llama-3.3-70B-Instruct-SAE-l50.pt",
            50,
            "meta-llama/Llama-3.3-70B-Instruct",
            ("llama3.3-70b-it", "50-resid-post-gf"),
        ),
    ],
)
def test_release_ids_resolve_to_files_layer_model_and_labels(
    name: str, spec: str, layer: int, model: str, neuronpedia: tuple[str, str] | None
) -> None:
    assert looks_like_release(name)
    source = resolve(name)
    assert (source.spec, source.layer, source.model, source.neuronpedia) == (
        spec,
        layer,
        model,
        neuronpedia,
    )
    assert source.name == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "gemma-scope-2-270m-res/layer_12_width_16k_l0_medium",
            "'gemma-scope-2-270m-res' is not a SAELens release .* did you mean "
            "gemma-scope-2-270m-it-res",
        ),
        (
            "gemma-scope-2-270m-it-res/layer_12_width_16k_l0_medum",
            "did you mean layer_12_width_16k_l0_medium",
        ),
        ("nothing-like-it/x", "known: gemma-scope-2-12b-it-res"),
        ("goodfire-llama-3.1-8b-instruct/layer_20", "Unknown SAE id 'layer_20' .* layer_19"),
    ],
)
def test_bad_release_names_give_one_line_with_close_matches(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        resolve(name)
    assert "\n" not in str(raised.value)


def test_paths_and_hub_specs_are_not_release_names(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not looks_like_release(str(tmp_path / "a" / "b"))
    assert not looks_like_release("hf:google/gemma-scope-2-270m-it/resid_post")
    assert not looks_like_release("./saes/mine")
    assert not looks_like_release("params.npz")


def test_serve_sae_release_loads_through_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --sae RELEASE/ID --model M --layer L`: the SAE file the name resolves to is
    fetched through hub.download (here from an offline cache) and hooked."""
    offline_hub = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(offline_hub))
    tiny = build_tiny()
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    source = resolve(EXAMPLE)
    weights = Weights.random(d_in=tiny.model.config.hidden_size)
    written = write_gemma_scope_2(tmp_path / "sae", weights)
    write_hub_cache(offline_hub, source.repo_id, {f"{source.path}/params.safetensors": written})
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"index": 3, "label": "pirate speech"}\n', encoding="utf-8")
    argv = ["--sae", EXAMPLE, "--model", str(tmp_path / "model"), "--layer", "1"]
    argv += ["--labels", str(labels)]
    args = cli.build_parser().parse_args([*argv, "--device", "cpu", "--dtype", "float32"])
    bundle = cli._load_bundle(args)
    assert (bundle.sae_id, bundle.layer, bundle.sae.d_sae) == (EXAMPLE, 1, weights.W_enc.shape[1])
    assert bundle.sae.hook_layer == 12  # from the folder name; --layer overrode it for tiny
    assert bundle.labels.label(3) == "pirate speech"


def test_serve_refuses_bad_sae_names_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--sae", "gemma-scope-2-270m-it-res/layer_99"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Unknown SAE id 'layer_99'" in error
    with pytest.raises(SystemExit):
        cli.main(["--sae", "hf:someone/saes/file.pth"])
    assert "needs --model too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--preset", "tiny", "--sae", EXAMPLE])


# ---- --list-presets ----------------------------------------------------------------------------


def test_list_presets_prints_every_preset_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapters", "serve", "--list-presets"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "PRESET", "MODEL", "SAE", "LAYER", "WIDTH", "PARAMS", "BF16", "FP32", "CPU", "LABELS"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(PRESETS)
    for name, entry in CATALOG.items():
        assert entry.model in rows[name] and entry.sae in rows[name]
        assert rows[name].endswith("yes (Neuronpedia)" if entry.neuronpedia else "no")
    assert "268M" in rows["gemma-3-270m-it"] and "70.6B" in rows["llama-3.3-70b"]


def test_list_presets_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list-presets"]) == 0
    printed = capsys.readouterr().out
    assert all(f"\n{name} " in printed for name in PRESETS)
