"""Finding features by meaning from the bot, as a user does it: `ember-bot console --serve tiny`
offline, with no embedding model (search by activation finds what no label says)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.console_helpers import console_env, run_console

SCRIPT = [
    "/steer cheerful 0.5",
    "hello",
    "/autosteer be cheerful",
    "y",
    "/features",
    "/steer sadness 0.4",
    "/steer happy=0.3",
    "/steer glad=0.3",
]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the console printed for SCRIPT (one start of the tiny server for every test)."""
    folder = tmp_path_factory.mktemp("console")
    env = console_env(folder, None) | {"HF_HUB_OFFLINE": "1"}
    stdin = "\n".join(SCRIPT) + "\n"
    code, out, err = asyncio.run(run_console(stdin, env, "--serve", "tiny", cwd=folder))
    assert code == 0, err
    return out


def test_steer_offers_first_the_feature_that_fires_on_a_word_no_label_has(session: str) -> None:
    picker = session.split("bot> ", 1)[0]
    offered = picker.split('Which feature do you mean by "cheerful"? Top matches:\n', 1)[1]
    assert offered.splitlines()[0] == "  #419  happiness and joy"
    assert len(offered.splitlines()) == 6  # five choices, then how to pick one
    assert "e.g. /steer #419 0.5" in offered


def test_autosteer_proposes_it_and_apply_steers_it(session: str) -> None:
    rest = session.split("bot> ", 1)[1]
    proposal = rest.split('AutoSteer proposes, for "be cheerful":\n', 1)[1].splitlines()
    assert proposal[0].startswith("happiness and joy") and proposal[0].endswith("#419")
    steering = rest.split('Steering on variant "default"', 1)[1]
    assert "happiness and joy" in steering and "+0.6" in steering


def test_a_query_naming_a_feature_steers_it_at_once_and_a_guess_is_not_steered(
    session: str,
) -> None:
    assert '"sadness and grief" (#458) +0.40' in session
    assert '"happiness and joy" (#419) +0.30' in session  # 'happy' is in 'happiness'
    assert 'error: "glad" could be several features: #' in session
