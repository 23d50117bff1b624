"""Search by activation on the tiny model, which has no embedding model: the features that
fire on the query's words, against neutral text, through the unmodified goodfire SDK."""

from __future__ import annotations

from collections.abc import Iterator

import goodfire
import pytest

from server.api.feature_search import engine_readout
from server.engine.runtime import Runtime
from server.model.presets import TINY_PLANTED, ModelBundle
from server.model.search.activation import ActivationSearch

HAPPINESS, _ = TINY_PLANTED["happiness and joy"]
SADNESS, _ = TINY_PLANTED["sadness and grief"]


@pytest.fixture(scope="module")
def runtime(tiny_bundle: ModelBundle) -> Iterator[Runtime]:
    engine = Runtime(tiny_bundle)
    yield engine
    engine.close()


async def test_a_word_no_label_has_finds_the_feature_that_fires_on_it(client, model_id) -> None:
    found = await client.features.search("cheerful", model=model_id, top_k=10)
    assert len(found) == 10
    assert (found[0].label, found[0].index_in_sae) == ("happiness and joy", HAPPINESS)
    assert [f.label for f in await client.features.search("glad", model=model_id)][:1] != [
        "happiness and joy"
    ]  # 'glad' is no trigger word of the tiny model: activation finds only what fires


async def test_generic_features_drop_out_against_the_neutral_baseline(
    runtime: Runtime, tiny_bundle: ModelBundle
) -> None:
    readout = engine_readout(runtime)
    fired = await readout("hello, cheerful", None)
    greetings = [i for i in fired if "'hello'" in tiny_bundle.labels.label(i) and fired[i] > 0]
    assert greetings  # 'hello' fires a word-group feature, as it does on the neutral "Hello."
    scores = await ActivationSearch(readout).scores("hello, cheerful")
    assert max(scores, key=scores.__getitem__) == HAPPINESS
    assert not set(greetings) & set(scores)


async def test_rerank_and_search_agree_on_activation(client, model_id) -> None:
    pool = await client.features.lookup([0, 1, SADNESS, HAPPINESS, 2], model=model_id)
    group = goodfire.FeatureGroup(list(pool.values()))
    reranked = await client.features.rerank(group, "cheerful", model=model_id, top_k=5)
    assert reranked[0].index_in_sae == HAPPINESS
    assert sorted(f.index_in_sae for f in reranked) == sorted(pool)


@pytest.mark.parametrize(
    ("specification", "feature", "sign"),
    [("be cheerful", HAPPINESS, 1), ("talk like a pirate", TINY_PLANTED["pirate speech"][0], 1)]
    + [("be less sad", SADNESS, -1)],
)
async def test_autosteer_proposes_the_features_behind_the_specification(
    client, model_id, specification: str, feature: int, sign: int
) -> None:
    edits = await client.features.AutoSteer(specification, model=model_id)
    proposed = list(edits.as_dict().items())
    assert 1 <= len(proposed) <= 5
    (first, strength), *_ = proposed
    assert first.index_in_sae == feature
    assert 0 < sign * strength <= 1
    assert all(abs(value) <= abs(strength) for _, value in proposed)
