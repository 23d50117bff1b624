"""The labels cache (server/model/neuronpedia.py) against a loopback exports site: interrupted and
corrupt downloads never count as cached, reruns resume, and the cache is shared between the
Neuronpedia ids and an explanations/ URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.model import neuronpedia
from server.model.labels import LabelIndex
from tests.support import hub_repos
from tests.support.fake_hub import FakeExports, labels_folders, partial_files

NP_MODEL, NP_SOURCE = "gemma-3-270m-it", "12-gemmascope-2-res-16k"
D_SAE = 96
PIRATE = 77  # in the second batch
LABELS = {index: f"word group {index}" for index in range(D_SAE)} | {
    PIRATE: "pirate speech and nautical slang"
}


@pytest.fixture(scope="module")
def exports() -> Iterator[FakeExports]:
    with FakeExports(hub_repos.explanation_batches(NP_MODEL, NP_SOURCE, LABELS, 2)) as fake:
        yield fake


@pytest.fixture
def labels_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(neuronpedia.LABELS_CACHE_ENV, str(tmp_path / "labels"))
    monkeypatch.delenv(neuronpedia.LABELS_URL_ENV, raising=False)
    return tmp_path / "labels"


def batch_path(number: int) -> str:
    return f"/v1/{NP_MODEL}/{NP_SOURCE}/explanations/batch-{number}.jsonl.gz"


def test_an_interrupted_labels_download_is_not_cached_and_a_rerun_resumes(
    labels_cache: Path, exports: FakeExports
) -> None:
    exports.cut_once.add(batch_path(1))  # the connection drops halfway through batch 1
    base = f"{exports.url}/v1"
    first_batch_gets = exports.requests.count(("GET", batch_path(0)))

    with pytest.raises(neuronpedia.LabelsDownloadError) as failure:
        neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=base)

    message = str(failure.value)
    assert "\n" not in message and batch_path(1) in message and "Run again to resume" in message
    assert labels_folders(labels_cache) == {f"{NP_MODEL}/{NP_SOURCE}{neuronpedia.PARTIAL}": False}
    staged = labels_cache / NP_MODEL / f"{NP_SOURCE}{neuronpedia.PARTIAL}" / "explanations"
    assert [path.name for path in staged.iterdir()] == ["batch-0.jsonl.gz"]  # whole ones only
    with pytest.raises(neuronpedia.LabelsDownloadError, match="HF_HUB_OFFLINE=1 is set"):
        neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=base, offline=True)

    folder = neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=base)

    assert folder == labels_cache / NP_MODEL / NP_SOURCE / "explanations"
    assert labels_folders(labels_cache) == {f"{NP_MODEL}/{NP_SOURCE}": True}
    assert exports.requests.count(("GET", batch_path(0))) == first_batch_gets + 1  # resumed
    assert LabelIndex.load(folder, D_SAE).search("pirate", top_k=1)[0][0] == PIRATE
    assert partial_files(labels_cache) == []


def test_labels_from_an_explanations_url_share_the_cache(
    labels_cache: Path, exports: FakeExports
) -> None:
    url = f"{exports.url}/v1/{NP_MODEL}/{NP_SOURCE}/explanations/"
    folder = neuronpedia.fetch_labels_folder(url)
    asked = len(exports.requests)

    assert folder == labels_cache / NP_MODEL / NP_SOURCE / "explanations"
    assert neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, offline=True) == folder
    assert neuronpedia.fetch_labels_folder(url, offline=True) == folder
    assert len(exports.requests) == asked


def test_a_batch_that_is_not_gzip_is_refused_and_not_kept(labels_cache: Path) -> None:
    broken = {batch_path(0): b"<html>captive portal</html>"}
    with FakeExports(broken) as site, pytest.raises(neuronpedia.LabelsDownloadError) as failure:
        neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=f"{site.url}/v1")
    assert "did not arrive whole" in str(failure.value)
    assert labels_folders(labels_cache) == {}
    assert partial_files(labels_cache) == []


def test_s3s_403_for_a_missing_key_ends_the_list_but_not_on_the_first_batch(
    labels_cache: Path,
) -> None:
    batches = hub_repos.explanation_batches(NP_MODEL, NP_SOURCE, LABELS, 2)
    with FakeExports(batches, missing_status=403) as site:
        folder = neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=f"{site.url}/v1")
    assert sorted(path.name for path in folder.iterdir()) == [
        "batch-0.jsonl.gz",
        "batch-1.jsonl.gz",
    ]

    with (
        FakeExports({}, missing_status=403) as site,
        pytest.raises(neuronpedia.LabelsDownloadError) as failure,
    ):
        neuronpedia.fetch_labels(NP_MODEL, "no-such-source", base_url=f"{site.url}/v1")
    message = str(failure.value)
    assert "HTTP 403" in message and "missing or private" in message and "\n" not in message


def test_a_labels_cache_that_cannot_be_written_is_one_line(
    tmp_path: Path, exports: FakeExports, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(neuronpedia.LABELS_CACHE_ENV, str(blocker / "labels"))
    with pytest.raises(neuronpedia.LabelsDownloadError) as failure:
        neuronpedia.fetch_labels(NP_MODEL, NP_SOURCE, base_url=f"{exports.url}/v1")
    message = str(failure.value)
    assert neuronpedia.LABELS_CACHE_ENV in message and "\n" not in message
    assert blocker.read_text() == "not a folder"


def test_labels_base_url_and_cache_come_from_the_environment(
    labels_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert neuronpedia.labels_url() == neuronpedia.DEFAULT_LABELS_URL
    assert neuronpedia.DEFAULT_LABELS_URL.endswith("amazonaws.com/v1")
    monkeypatch.setenv(neuronpedia.LABELS_URL_ENV, "http://mirror.example/np/")
    assert neuronpedia.export_url("m", "s") == "http://mirror.example/np/m/s/explanations"
    assert neuronpedia.export_url("m", "s", "http://flag/") == "http://flag/m/s/explanations"
    assert neuronpedia.cached_folder("m", "s") == labels_cache / "m" / "s"
    monkeypatch.delenv(neuronpedia.LABELS_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert neuronpedia.cache_root() == Path("/xdg/ember-bot/labels")
    with pytest.raises(neuronpedia.LabelsDownloadError, match="not a Neuronpedia"):
        neuronpedia.export_url("../etc", "s")
