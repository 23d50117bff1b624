"""`ember-bot fetch` and serve's first-use downloads, against a loopback Hugging Face Hub and a
loopback Neuronpedia exports site (tests/support/fake_hub.py) serving the real repo ids of the
catalogue with tiny contents: only HF_ENDPOINT and EMBER_LABELS_URL differ from a user's run.

The command line runs as real subprocesses (huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE when imported). The labels cache on its own: test_label_exports.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import goodfire
import httpx
import pytest

from server.model import neuronpedia
from server.model.catalog import CATALOG
from server.model.labels import DEFAULT_EMBEDDING_MODEL
from tests.support import hub_repos
from tests.support.embedder_repo import embedder_files
from tests.support.fake_hub import FakeExports, FakeHub, HubRepo, labels_folders, partial_files

ROOT = Path(__file__).resolve().parents[2]
PRESET = "gemma-3-270m-it"
MODEL = "google/gemma-3-270m-it"
NP_MODEL, NP_SOURCE = "gemma-3-270m-it", "12-gemmascope-2-res-16k"
GATED = "meta-llama/Llama-3.1-8B-Instruct"
ACCEPTED_TOKEN = "hf_licence_accepted"
D_SAE = 96
PIRATE = 77  # in the second batch
LABELS = {index: f"word group {index}" for index in range(D_SAE)} | {
    5: "cats, kittens and other felines",
    PIRATE: "pirate speech and nautical slang",
}
STARTUP_SECONDS = 120
# The search embedding model: a tiny BERT that knows 'sailor' is nautical (what search reads),
# beside other formats that fetch leaves alone.
EMBEDDER = embedder_files({"sea": ("pirate", "nautical", "sailor")}, LABELS.values())
EMBEDDING_EXTRAS = {"onnx/model.onnx": b"onnx", "pytorch_model.bin": b"bin", "README.md": b"#"}
EMBEDDER_REPO = "models--sentence-transformers--all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def hub() -> Iterator[FakeHub]:
    gemma = CATALOG[PRESET].source()
    llama = CATALOG["llama-3.1-8b"].source()
    assert (gemma.model, gemma.repo_id, gemma.layer) == (MODEL, "google/gemma-scope-2-270m-it", 12)
    assert CATALOG[PRESET].neuronpedia == (NP_MODEL, NP_SOURCE)
    repos = {
        MODEL: HubRepo(hub_repos.tiny_gemma3(layers=CATALOG[PRESET].layers)),
        gemma.repo_id: HubRepo(hub_repos.gemma_scope_2(gemma.layer, D_SAE)),
        GATED: HubRepo(
            hub_repos.tiny_llama(layers=llama.layer + 1),
            gated=True,
            tokens=frozenset({ACCEPTED_TOKEN}),
        ),
        llama.repo_id: HubRepo(hub_repos.goodfire(llama.path, D_SAE)),
        DEFAULT_EMBEDDING_MODEL: HubRepo(EMBEDDER | EMBEDDING_EXTRAS),
    }
    with FakeHub(repos) as fake:
        yield fake


@pytest.fixture(scope="session")
def exports() -> Iterator[FakeExports]:
    files = hub_repos.explanation_batches(NP_MODEL, NP_SOURCE, LABELS, batches=2)
    files |= hub_repos.explanation_batches("llama3.1-8b-it", "19-resid-post-gf", LABELS, 1)
    with FakeExports(files) as fake:
        yield fake


@pytest.fixture
def env(tmp_path: Path, hub: FakeHub, exports: FakeExports) -> dict[str, str]:
    """A user's environment with empty caches in tmp_path, pointed at the loopback sites."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HF_", "HUGGING", "TRANSFORMERS_", "EMBER_LABELS"))
    }
    return clean | {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "EMBER_LABELS_URL": f"{exports.url}/v1",
        "EMBER_LABELS_CACHE": str(tmp_path / "labels"),
        "EMBER_SEARCH_CACHE": str(tmp_path / "search"),
    }


def ember_bot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "adapters", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@contextmanager
def serving(args: list[str], env: dict[str, str], output: list[str] | None = None) -> Iterator[str]:
    """`ember-bot serve ARGS` on a free port; yields its base URL once /health answers.
    `output` receives what it printed, once it has stopped."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "adapters", "serve", *args, "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"serve did not start:\n{process.communicate()[0]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            printed = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            printed = process.communicate()[0]
        if output is not None:
            output.append(printed)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def search(url: str, query: str) -> list[tuple[int, str]]:
    """Feature search through the unmodified goodfire SDK."""
    client = goodfire.AsyncClient("any-key", base_url=url)
    found = await client.features.search(query, model=MODEL, top_k=3)  # type: ignore[arg-type]
    return [(feature.index_in_sae, feature.label) for feature in found]


# ---- fetch, then serve offline; serve fetching on first use -------------------------------------


async def test_fetch_then_serve_offline_from_the_cache(
    env: dict[str, str], tmp_path: Path, hub: FakeHub, exports: FakeExports
) -> None:
    fetched = ember_bot("fetch", PRESET, env=env)

    assert fetched.returncode == 0, fetched.stderr
    assert f"HF_HUB_OFFLINE=1 ember-bot serve --preset {PRESET}" in fetched.stdout
    assert f"search  {DEFAULT_EMBEDDING_MODEL}: {tmp_path}" in fetched.stdout
    snapshots = tmp_path / "hf" / "hub" / "models--google--gemma-3-270m-it" / "snapshots"
    (snapshot,) = snapshots.iterdir()
    assert {path.name for path in snapshot.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    labels = tmp_path / "labels" / NP_MODEL / NP_SOURCE
    assert json.loads((labels / neuronpedia.COMPLETE).read_text())["batches"] == 2
    assert labels_folders(tmp_path / "labels") == {f"{NP_MODEL}/{NP_SOURCE}": True}
    assert partial_files(tmp_path) == []

    asked = len(hub.requests), len(exports.requests)
    offline = env | {"HF_HUB_OFFLINE": "1"}
    printed: list[str] = []
    with serving(["--preset", PRESET, "--device", "cpu"], offline, printed) as url:
        assert (await search(url, "pirate"))[0] == (PIRATE, LABELS[PIRATE])
        assert (await search(url, "kittens"))[0] == (5, LABELS[5])
        assert (await search(url, "sailor"))[0] == (PIRATE, LABELS[PIRATE])  # by meaning
    assert (len(hub.requests), len(exports.requests)) == asked  # nothing asked of the network
    semantic = f"semantic ({DEFAULT_EMBEDDING_MODEL}) + lexical + activation search"
    assert f"search: embedding {len(LABELS)} labels with {DEFAULT_EMBEDDING_MODEL}" in printed[0]
    assert semantic in printed[0]  # the start-up line

    (cached,) = (tmp_path / "search").rglob("*.npz")
    written = cached.stat().st_mtime_ns
    with serving(["--preset", PRESET, "--device", "cpu"], offline, printed) as url:
        assert (await search(url, "sailor"))[0] == (PIRATE, LABELS[PIRATE])
    assert "search: embedding" not in printed[1] and semantic in printed[1]
    assert cached.stat().st_mtime_ns == written  # the labels' embeddings came from the cache

    shutil.rmtree(tmp_path / "hf" / "hub" / EMBEDDER_REPO)  # nothing cached, no network
    with serving(["--preset", PRESET, "--device", "cpu"], offline, printed) as url:
        assert (await search(url, "pirate"))[0] == (PIRATE, LABELS[PIRATE])
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{url}/health")).json()
    assert health["search"] == "lexical + activation"
    assert "lexical + activation search" in printed[2]
    assert f"search  {DEFAULT_EMBEDDING_MODEL}: not available" in printed[2]


async def test_serve_fetches_what_is_missing_on_first_use(
    env: dict[str, str], tmp_path: Path
) -> None:
    with serving(["--sae", CATALOG[PRESET].sae, "--device", "cpu"], env) as url:
        assert (await search(url, "nautical"))[0] == (PIRATE, LABELS[PIRATE])
    assert labels_folders(tmp_path / "labels") == {f"{NP_MODEL}/{NP_SOURCE}": True}
    assert partial_files(tmp_path) == []
    again = ember_bot("fetch", PRESET, env=env | {"HF_HUB_OFFLINE": "1"})  # all in the cache
    assert again.returncode == 0, again.stderr


def test_a_gated_model_downloads_with_an_accepted_token(
    env: dict[str, str], tmp_path: Path
) -> None:
    fetched = ember_bot("fetch", "llama-3.1-8b", env=env | {"HF_TOKEN": ACCEPTED_TOKEN})
    assert fetched.returncode == 0, fetched.stderr
    assert labels_folders(tmp_path / "labels") == {"llama3.1-8b-it/19-resid-post-gf": True}


def test_fetch_takes_only_what_search_reads_of_the_embedding_model(
    env: dict[str, str], tmp_path: Path
) -> None:
    fetched = ember_bot("fetch", PRESET, env=env)

    assert fetched.returncode == 0, fetched.stderr
    assert f"search  {DEFAULT_EMBEDDING_MODEL}: " in fetched.stdout
    (snapshot,) = (tmp_path / "hf" / "hub" / EMBEDDER_REPO / "snapshots").iterdir()
    files = {path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*.*")}
    assert files == set(EMBEDDER)


@pytest.mark.parametrize(
    "where",
    [
        ["--labels-url", "{exports}/v1"],
        ["--labels", "{exports}/v1/gemma-3-270m-it/12-gemmascope-2-res-16k/explanations/"],
    ],
    ids=["labels-url-flag", "labels-url-of-a-folder"],
)
def test_the_labels_can_come_from_elsewhere_than_the_default_base(
    env: dict[str, str], tmp_path: Path, exports: FakeExports, where: list[str]
) -> None:
    where = [part.format(exports=exports.url) for part in where]
    unreachable = env | {"EMBER_LABELS_URL": f"{exports.url}/nothing-here"}  # the flag wins

    fetched = ember_bot("fetch", "--sae", CATALOG[PRESET].sae, *where, env=unreachable)

    assert fetched.returncode == 0, fetched.stderr
    assert labels_folders(tmp_path / "labels") == {f"{NP_MODEL}/{NP_SOURCE}": True}
    serve = f"HF_HUB_OFFLINE=1 ember-bot serve --sae {CATALOG[PRESET].sae}"
    assert serve in fetched.stdout


def test_fetching_the_tiny_preset_needs_nothing(env: dict[str, str]) -> None:
    fetched = ember_bot("fetch", "tiny", env=env)
    assert (fetched.returncode, fetched.stdout) == (0, "tiny: built in memory, nothing to fetch.\n")


# ---- failures: one line, non-zero, nothing half-written -----------------------------------------

GATED_LINE = (
    f"ember-bot fetch: {GATED} is gated: accept its licence at https://huggingface.co/{GATED} "
    "and set HF_TOKEN (or run `hf auth login`)."
)
OFFLINE_LINE = (
    f"ember-bot serve: could not load the model: {MODEL} is not in the local cache and "
    f"HF_HUB_OFFLINE=1 is set: run `ember-bot fetch {PRESET}` first."
)


@pytest.mark.parametrize(
    ("args", "extra_env", "expected"),
    [
        (
            ["fetch", "gemma-9"],
            {},
            "ember-bot fetch: Unknown preset 'gemma-9'; choose one of: tiny, gemma-3-270m-it, ",
        ),
        (["fetch", "llama-3.1-8b"], {}, GATED_LINE),
        (["fetch", "llama-3.1-8b"], {"HF_TOKEN": "hf_not_accepted"}, GATED_LINE),
        (["serve", "--preset", PRESET], {"HF_HUB_OFFLINE": "1"}, OFFLINE_LINE),
        (
            ["fetch", PRESET],
            {"HF_HUB_OFFLINE": "1"},
            f"ember-bot fetch: {MODEL} is not in the local cache and HF_HUB_OFFLINE=1",
        ),
        (
            ["fetch", PRESET],
            {"EMBER_LABELS_URL": "{exports}/mirror"},
            "ember-bot fetch: No labels export at {exports}/mirror/gemma-3-270m-it/"
            "12-gemmascope-2-res-16k/explanations/batch-0.jsonl.gz (not found): check the "
            "Neuronpedia model and source ids, or note that --labels-url or EMBER_LABELS_URL can "
            "point at a mirror.",
        ),
    ],
    ids=["bad-preset", "gated", "gated-wrong-token", "serve-offline", "fetch-offline", "no-export"],
)
def test_failures_say_one_line_and_leave_nothing_half_written(
    env: dict[str, str],
    tmp_path: Path,
    exports: FakeExports,
    args: list[str],
    extra_env: dict[str, str],
    expected: str,
) -> None:
    run_env = env | {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    run_env |= {name: value.format(exports=exports.url) for name, value in extra_env.items()}

    failed = ember_bot(*args, env=run_env)

    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(expected.format(exports=exports.url)), lines[0]
    assert partial_files(tmp_path) == []
    assert labels_folders(tmp_path / "labels") == {}
    gated_blobs = tmp_path / "hf" / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct" / "blobs"
    assert not gated_blobs.exists() or not any(gated_blobs.iterdir())
