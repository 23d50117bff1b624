"""The server's building blocks: feature ids, controller compilation, decoding, the worker thread,
and the steering math of the runtime (checked through its public operations on the tiny model)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import goodfire
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from server.engine.calibration import STEERING_STRENGTH
from server.engine.controller import (
    MAX_SCOPE_DEPTH,
    Condition,
    ControllerError,
    Edit,
    WireController,
    compile_plan,
)
from server.engine.decoding import IncrementalDetokenizer, StopMatcher, sample_next_token
from server.engine.prompts import PromptError
from server.engine.runtime import Runtime
from server.engine.worker import InferenceWorker, WorkerStopped
from server.model.ids import FeatureIds, UnknownFeatureError, feature_uuid
from server.model.presets import TINY_PLANTED


def feature(index: int, label: str = "") -> goodfire.Feature:
    return goodfire.Feature(uuid.uuid4(), label or f"feature {index}", index)


def controller_of(variant: goodfire.Variant) -> WireController:
    return WireController.model_validate(variant.controller.json())


# ---- ids ----------------------------------------------------------------------------------


def test_feature_ids_are_deterministic_and_accept_both_spellings() -> None:
    ids = FeatureIds("org/model", "sae-a", 16)
    assert ids.uuid_of(3) == feature_uuid("org/model", "sae-a", 3)
    assert ids.uuid_of(3) != feature_uuid("org/model", "sae-b", 3)
    assert ids.index_of(ids.uuid_of(3).hex) == 3
    assert ids.index_of(str(ids.uuid_of(3))) == 3
    assert ids.index_of(str(uuid.uuid4())) is None
    assert ids.index_of("not-a-uuid") is None


# ---- controller ---------------------------------------------------------------------------


def test_variant_controller_compiles_to_edits_and_scopes() -> None:
    pirate, cat = feature(3, "pirate"), feature(5, "cat")
    variant = goodfire.Variant("any/model")
    variant.set(pirate, 0.5)
    variant.set(cat, -0.3)
    variant.set_when(pirate > 0.25, {cat: 0.7})
    variant.abort_when((cat > 0.2) | (pirate < cat))

    plan = compile_plan(controller_of(variant), d_sae=8)

    assert plan.edits == (Edit("nudge", 3, 0.5), Edit("nudge", 5, -0.3))
    set_when, abort_when = plan.scopes
    assert set_when.event_name is None
    assert set_when.plan.edits == (Edit("nudge", 5, 0.7),)
    assert set_when.trigger.conditions == (Condition((3,), 0.25, ">"),)
    assert abort_when.event_name == next(iter(variant._handlers))
    assert abort_when.trigger.join == "OR"
    assert abort_when.trigger.conditions[1] == Condition((3,), (5,), "<")


def test_conditions_evaluate_on_group_maxima() -> None:
    readings = {(1,): 0.9, (2,): 0.1, (1, 2): 0.9}
    assert Condition((1, 2), 0.5, ">").holds(readings.__getitem__)
    assert not Condition((2,), (1,), ">=").holds(readings.__getitem__)


def test_pin_and_mul_modes_survive_compilation() -> None:
    controller = WireController.model_validate(
        {
            "interventions": [
                {"mode": "pin", "features": {"features": [{"index_in_sae": 1}]}, "value": 0.0},
                {"mode": "mul", "features": {"features": [{"index_in_sae": 2}]}, "value": 2.0},
            ]
        }
    )
    assert compile_plan(controller, 4).edits == (Edit("pin", 1, 0.0), Edit("mul", 2, 2.0))


def test_unknown_feature_index_is_rejected() -> None:
    variant = goodfire.Variant("any/model")
    variant.set(feature(99), 0.5)
    with pytest.raises(UnknownFeatureError, match="99.*8 features"):
        compile_plan(controller_of(variant), d_sae=8)


def test_scopes_nested_too_deep_are_rejected() -> None:
    condition = {
        "conditionals": [
            {"left_hand": {"features": [{"index_in_sae": 0}]}, "right_hand": 1, "operator": ">"}
        ]
    }
    nested: dict = {"interventions": [], "scopes": []}
    for _ in range(MAX_SCOPE_DEPTH + 1):
        nested = {"scopes": [{"conditionals": condition, "controller": nested}]}
    with pytest.raises(ControllerError, match="nested"):
        compile_plan(WireController.model_validate(nested), d_sae=4)


# ---- decoding -----------------------------------------------------------------------------


def test_stop_matcher_holds_back_a_possible_stop_and_cuts_at_a_real_one() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.push("hello </e") == "hello "
    assert matcher.push("nough") == "</enough"
    assert matcher.push(" bye</end> ignored") == " bye"
    assert matcher.stopped


def test_stop_matcher_flushes_held_text_when_generation_ends() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("almost ST") == "almost "
    assert matcher.flush() == "ST"
    assert not matcher.stopped


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["plain ascii words only"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_incremental_detokenizer_never_splits_a_character() -> None:
    tokenizer = byte_level_tokenizer()
    text = "naïve café 你好 🙂 done"
    ids = tokenizer(text).input_ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens

    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token_id) for token_id in ids]

    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_sampling_is_greedy_at_zero_temperature_and_reproducible_with_a_seed() -> None:
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [
            sample_next_token(logits, temperature=1.5, top_p=1.0, generator=generator)
            for _ in range(30)
        ]

    greedy = sample_next_token(logits, temperature=0, top_p=0.9, generator=torch.Generator())
    assert greedy == 1
    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 1
    nucleus = torch.Generator().manual_seed(0)
    assert {
        sample_next_token(logits, temperature=1.0, top_p=0.01, generator=nucleus) for _ in range(20)
    } == {1}


# ---- worker -------------------------------------------------------------------------------


async def test_worker_interleaves_concurrent_streams() -> None:
    worker = InferenceWorker()
    arrivals: list[str] = []

    def ticks(name: str):
        for _ in range(15):
            time.sleep(0.002)
            yield name

    async def consume(name: str) -> None:
        async for item in worker.stream(ticks(name)):
            arrivals.append(item)

    await asyncio.gather(consume("a"), consume("b"))
    worker.close()
    assert sorted(arrivals) == ["a"] * 15 + ["b"] * 15
    assert arrivals.index("b") < len(arrivals) - arrivals[::-1].index("a") - 1


async def test_worker_runs_calls_between_steps_and_cancels_abandoned_streams() -> None:
    worker = InferenceWorker()
    closed = threading.Event()

    def endless():
        try:
            while True:
                time.sleep(0.001)
                yield "tick"
        finally:
            closed.set()

    stream = worker.stream(endless())
    assert await anext(stream) == "tick"
    assert await worker.call(lambda: 41 + 1) == 42
    await stream.aclose()
    assert await asyncio.to_thread(closed.wait, 5)
    worker.close()


async def test_worker_hands_errors_to_the_caller() -> None:
    worker = InferenceWorker()

    def failing():
        yield 1
        raise ValueError("boom")

    received = []
    with pytest.raises(ValueError, match="boom"):
        async for item in worker.stream(failing()):
            received.append(item)
    with pytest.raises(ZeroDivisionError):
        await worker.call(lambda: 1 / 0)
    worker.close()
    assert received == [1]


async def test_closing_the_worker_fails_unfinished_and_later_jobs() -> None:
    worker = InferenceWorker()

    def endless():
        while True:
            time.sleep(0.001)
            yield "tick"

    stream = worker.stream(endless())
    assert await anext(stream) == "tick"
    await asyncio.to_thread(worker.close)
    with pytest.raises(WorkerStopped):
        async for _tick in stream:
            pass
    with pytest.raises(WorkerStopped):
        await worker.call(lambda: 1)


# ---- runtime steering math ----------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tiny_bundle) -> Iterator[Runtime]:
    engine = Runtime(tiny_bundle)
    yield engine
    engine.close()


PIRATE, PIRATE_WORDS = TINY_PLANTED["pirate speech"]
PIRATE_TEXT = [
    {"role": "user", "content": "hello there, how is the sea today?"},
    {"role": "assistant", "content": "the sea is calm . ahoy matey , the treasure waits"},
]


def plan_of(runtime: Runtime, interventions: list[tuple[str, int, float]], scopes=()):
    controller = {
        "interventions": [
            {"mode": mode, "features": {"features": [{"index_in_sae": index}]}, "value": value}
            for mode, index, value in interventions
        ],
        "scopes": list(scopes),
    }
    return compile_plan(WireController.model_validate(controller), runtime.d_sae)


async def activations(runtime: Runtime, plan, indices: list[int]) -> torch.Tensor:
    """[tokens, len(indices)] activations over PIRATE_TEXT, as compute-features reports them."""
    rows = await runtime.inspect(runtime.encode_chat(PIRATE_TEXT, "read"), plan, "count", indices)
    return torch.tensor([[dict(row.activations)[i] for i in indices] for row in rows])


def test_scale_is_strength_times_residual_norm_over_decoder_norm(runtime: Runtime) -> None:
    decoder_norms = runtime.bundle.sae.W_dec.detach().norm(dim=1)
    expected = STEERING_STRENGTH * runtime.residual_norm
    assert runtime.residual_norm > 0
    assert torch.allclose(runtime.scale * decoder_norms, torch.full_like(decoder_norms, expected))


async def test_nudge_pin_and_mul_set_the_reported_activations(runtime: Runtime) -> None:
    nudged, pinned = 0, 1
    base = await activations(runtime, plan_of(runtime, []), [nudged, pinned, PIRATE])
    assert base[:, 2].any()  # the pirate words fire the planted feature
    edits = [("nudge", nudged, 0.5), ("pin", pinned, 0.25), ("mul", PIRATE, 0.0)]
    steered = await activations(runtime, plan_of(runtime, edits), [nudged, pinned, PIRATE])
    assert torch.allclose(steered[:, 0], base[:, 0] + 0.5 * runtime.scale[nudged], atol=1e-5)
    assert torch.allclose(steered[:, 1], torch.full_like(base[:, 1], 0.25 * runtime.scale[pinned]))
    assert not steered[:, 2].any()


async def test_set_when_switches_on_at_the_first_token_where_it_holds_and_stays_on(
    runtime: Runtime,
) -> None:
    watched, pinned = PIRATE, 0
    base = await activations(runtime, plan_of(runtime, []), [watched])
    threshold = float(base[:, 0].max()) / 2
    first = int(torch.nonzero(base[:, 0] > threshold)[0])
    assert 0 < first < len(base) - 1
    scope = {
        "conditionals": {
            "conditionals": [
                {
                    "left_hand": {"features": [{"index_in_sae": watched}]},
                    "right_hand": threshold,
                    "operator": ">",
                }
            ]
        },
        "controller": {
            "interventions": [
                {"mode": "pin", "features": {"features": [{"index_in_sae": pinned}]}, "value": 1}
            ]
        },
    }
    steered = await activations(runtime, plan_of(runtime, [], [scope]), [pinned])
    pinned_value = float(runtime.scale[pinned])
    assert torch.all(steered[first:, 0] == pinned_value)
    assert not torch.any(steered[:first, 0] == pinned_value)


NO_SYSTEM_ROLE_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_system_prompt_folds_into_the_first_turn_when_the_template_has_no_system_role(
    tiny_bundle,
) -> None:
    tokenizer = copy.deepcopy(tiny_bundle.tokenizer)
    tokenizer.chat_template = NO_SYSTEM_ROLE_TEMPLATE
    engine = Runtime(dataclasses.replace(tiny_bundle, tokenizer=tokenizer))
    try:
        conversation = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ]
        text = tokenizer.decode(engine.encode_chat(conversation, "generate"))
    finally:
        engine.close()
    assert "user<|end_header_id|>\n\nBe brief.\n\nhello" in text
    assert "system" not in text


def test_a_conversation_longer_than_the_context_is_refused(runtime: Runtime) -> None:
    words = runtime.context_length
    with pytest.raises(PromptError, match="reads at most"):
        runtime.encode_chat([{"role": "user", "content": "sea " * words}], "generate")
