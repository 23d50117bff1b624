"""The shared streaming renderer: cadence, rollover, code fences, finalisation."""

from adapters.streaming import PlatformLimits, StreamingMessage, balance_fences, utf8_length
from tests.support.reliability_helpers import RecordingSink


def make(max_length: int = 100, measure=len):
    sink = RecordingSink()
    limits = PlatformLimits(max_length=max_length, edit_interval=1.0, measure=measure)
    return sink, StreamingMessage(sink, limits, clock=lambda: sink.now)


async def test_edits_at_most_once_per_interval():
    sink, stream = make(max_length=10_000)
    await stream.start()
    for step in range(50):
        sink.now = step * 0.1
        await stream.push("word ")
    await stream.finish()
    times = [t for _, _, t in sink.edits[:-1]]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    assert sink.messages == ["word " * 50]


async def test_rollover_keeps_every_message_under_the_limit_and_loses_nothing():
    sink, stream = make(max_length=60)
    await stream.start()
    text = " ".join(f"w{i}" for i in range(200))
    for i, char in enumerate(text):
        sink.now = i
        await stream.push(char)
    await stream.finish(footer="variant default")
    assert len(sink.messages) > 5
    assert all(len(m) <= 60 for m in sink.messages)
    body = "".join(sink.messages).replace("variant default", "")
    assert body.replace(" ", "").replace("\n", "") == text.replace(" ", "")
    assert sink.messages[-1].endswith("variant default")
    assert not any(m.endswith("▌") for m in sink.messages)


async def test_rollover_inside_code_block_closes_and_reopens_fence():
    sink, stream = make(max_length=80)
    await stream.start()
    await stream.push("Here:\n```python\n" + "\n".join(f"x = {i}" for i in range(30)) + "\n```\n")
    await stream.finish()
    for message in sink.messages:
        assert message.count("```") % 2 == 0, message
    assert sink.messages[1].startswith("```python\n")


async def test_utf8_measure_splits_on_bytes_not_characters():
    sink, stream = make(max_length=50, measure=utf8_length)
    await stream.start()
    await stream.push("é" * 100)
    await stream.finish()
    assert all(utf8_length(m) <= 50 for m in sink.messages)
    assert "".join(sink.messages) == "é" * 100


async def test_finish_after_error_replaces_marker_with_note():
    sink, stream = make()
    await stream.start()
    await stream.push("partial answer")
    await stream.finish(note="⚠ reply cut short: backend unavailable")
    assert sink.messages == ["partial answer\n\n⚠ reply cut short: backend unavailable"]


async def test_finish_with_no_text_says_so():
    sink, stream = make()
    await stream.start()
    await stream.finish()
    assert sink.messages == ["(no reply)"]


def test_balance_fences_only_when_open():
    assert balance_fences("a ``` b ```", "c") == ("a ``` b ```", "c")
    assert balance_fences("```js\nx", "y") == ("```js\nx\n```", "```js\ny")


async def test_note_that_no_longer_fits_goes_to_a_new_message_after_settling_the_text():
    sink, stream = make(max_length=100)
    await stream.start()
    sink.now = 5.0
    await stream.push("a" * 50)
    sink.now = 5.5  # within the edit interval: the platform still shows the first 50
    await stream.push("b" * 40)
    await stream.finish(note="⚠ cut short", footer="variant default · " + "x" * 20)
    assert sink.messages[0] == "a" * 50 + "b" * 40
    assert sink.messages[1] == "⚠ cut short\nvariant default · " + "x" * 20
