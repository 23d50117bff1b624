"""bench/sdk_suite.py on a stand-in for the SDK's e2e folder (CI has no checkout of goodfire-sdk):
the rewrite it applies, and its run and report against the tiny server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sdk_suite import SUITE_FOLDER, prepare_suite, render, run_suite

# Shaped like the SDK's suite: package imports of the monorepo it came from, an Anthropic
# fixture, the hosted model names, and env-configured client settings.
CONFIG = """import os


class TestConfig:
    E2E_GOODFIRE_API_KEY = os.getenv("E2E_GOODFIRE_API_KEY", "")
    E2E_GOODFIRE_SDK_CLIENT_BASE_URL = os.getenv("E2E_GOODFIRE_SDK_CLIENT_BASE_URL", "")
"""
CONFTEST = """import pytest

from cajal.autointerp.frontier_models.claude import Claude
from sdk.python import goodfire
from sdk.tests.e2e.python.config import TestConfig

config = TestConfig()


@pytest.fixture
def goodfire_client():
    return goodfire.Client(
        api_key=config.E2E_GOODFIRE_API_KEY, base_url=config.E2E_GOODFIRE_SDK_CLIENT_BASE_URL
    )


@pytest.fixture
def claude_client():
    return Claude("key", model_name="claude-3-haiku-20240307")


@pytest.fixture
def variant_small():
    return goodfire.Variant(
        base_model="meta-llama/Meta-Llama-3.1-8B-Instruct",
    )


@pytest.fixture
def variant_medium():
    return goodfire.Variant(base_model="meta-llama/Llama-3.3-70B-Instruct")
"""
TESTS = """import pytest

from sdk.python.goodfire.api.exceptions import RequestFailedException
from sdk.python.goodfire.features.features import FeatureGroup


def test_search(goodfire_client, variant_small, variant_medium):
    assert isinstance(goodfire_client.features.search("pirate", model=variant_small), FeatureGroup)
    assert goodfire_client.features.search("pirate", model=variant_medium, top_k=3)


def test_features_search_raises_when_unsupported_model_is_provided(goodfire_client):
    expected = "Input should be 'meta-llama/Meta-Llama-3.1-8B-Instruct' or"
    with pytest.raises(RequestFailedException, match=expected):
        goodfire_client.features.search("pirate", model="unsupported-model")


def test_search_of_nothing(goodfire_client, variant_small):
    assert len(goodfire_client.features.search("pirate", model=variant_small, top_k=3)) == 4
"""


def fake_checkout(root: Path) -> Path:
    suite = root / SUITE_FOLDER
    suite.mkdir(parents=True)
    for name, text in {
        "__init__.py": "",
        "config.py": CONFIG,
        "conftest.py": CONFTEST,
        "test_features.py": TESTS,
        "test_z_org_rate_limit_chat.py": "def test_limits():\n    raise AssertionError\n",
    }.items():
        (suite / name).write_text(text)
    return root


def test_rewrite_touches_only_imports_and_the_model_fixtures(tmp_path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    kept = prepare_suite(fake_checkout(tmp_path / "sdk"), "ember-tiny", copy)
    assert kept == ["test_features.py"]  # the rate-limit file is left out
    conftest = (copy / "conftest.py").read_text()
    assert "cajal" not in conftest and "claude" not in conftest
    assert "import goodfire\nfrom config import TestConfig" in conftest
    assert conftest.count('base_model="ember-tiny"') == 2 and "meta-llama" not in conftest
    tests = (copy / "test_features.py").read_text()
    assert tests == TESTS.replace("sdk.python.goodfire", "goodfire")  # expected texts untouched
    assert not (copy / "__init__.py").exists()


def test_run_reports_each_test_and_names_hosted_only_failures(
    tmp_path, tiny_server, model_id
) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    prepare_suite(fake_checkout(tmp_path / "sdk"), model_id, copy)
    outcomes = {o.test: o for o in run_suite(copy, tiny_server.base_url, "key", None)}
    assert outcomes["test_search"].result == "passed"
    hosted = outcomes["test_features_search_raises_when_unsupported_model_is_provided"]
    assert hosted.result == "failed" and "hosted catalogue" in hosted.hosted_only
    ours = outcomes["test_search_of_nothing"]
    assert (ours.result, ours.hosted_only) == ("failed", "")
    assert ours.reason.startswith("assert 3 == 4")
    report = render(list(outcomes.values()), model_id)
    assert f"1 passed of 3 against {model_id}; of the 2 others, 1 depend" in report


@pytest.mark.parametrize("missing", ["", "tests/e2e"])
def test_a_folder_without_the_suite_is_refused(tmp_path, missing) -> None:
    (tmp_path / missing).mkdir(parents=True, exist_ok=True)
    with pytest.raises(SystemExit, match="is not the SDK's e2e suite"):
        prepare_suite(tmp_path, "ember-tiny", tmp_path / "copy")
