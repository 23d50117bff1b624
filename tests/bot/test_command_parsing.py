"""Pure logic of the registry: text parsing, coercion, history trimming, rendering."""

import pytest

from bot.commands.catalog import build_registry
from bot.commands.parsing import coerce_options
from bot.commands.render import bar, render_table
from bot.commands.replies import Table, TableRow
from bot.commands.steering import parse_batch
from bot.domain.errors import UserInputError
from bot.usecases.conversation import build_messages
from storage.store import StoredMessage

REGISTRY = build_registry()


def parse(line: str) -> tuple[str, dict]:
    command, text = REGISTRY.resolve_text(line)
    parser = command.parse_text
    from bot.commands.parsing import parse_positional

    return command.name, (parser or parse_positional)(command, text)


def test_steer_query_words_then_value():
    assert parse("/steer formal writing -0.3") == (
        "steer",
        {"feature": "formal writing", "value": -0.3},
    )


def test_steer_batch_keeps_quoted_labels():
    name, args = parse('/steer pirate=0.5 "formal writing"=-0.3')
    assert args["value"] is None
    assert parse_batch(args["feature"]) == [("pirate", 0.5), ("formal writing", -0.3)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/steer pirate 5", "Value must be between -1 and 1, got 5."),
        ("/steer pirate abc", "Value must be a number, got 'abc'."),
        ("/steer pirate nan", "Value must be a finite number, got 'nan'."),
        ("/steer pirate 1e309", "Value must be a finite number, got '1e309'."),
        ("/steer", "Say what to steer, e.g. /steer pirate 0.5"),
        ("/frobnicate", "Unknown command /frobnicate. Type /help for the list."),
        ("/variant rename a b", "/variant needs one of: new, use, list, delete, export, import."),
        ("/reset everything", "what must be one of steering, history, all; got 'everything'."),
        ("/inspect 0", "Top must be between 1 and 50, got 0."),
        ("/variant use a b", "Too many arguments. Usage: /variant use <name>"),
    ],
)
def test_bad_input_gives_one_specific_line(line, message):
    with pytest.raises(UserInputError) as caught:
        parse(line)
    assert caught.value.user_message == message
    assert "\n" not in caught.value.user_message


def test_group_default_subcommand_and_rest_args():
    assert parse("/features") == ("features show", {})
    assert parse("/features search pirate talk") == (
        "features search",
        {"query": "pirate talk", "top": None},
    )
    assert parse("/reset") == ("reset", {"what": "steering"})
    assert parse('/variant import x {"edits": []}')[1]["json"] == '{"edits": []}'


def test_structured_options_validate_like_text():
    steer = REGISTRY.get(("steer",))
    assert coerce_options(steer, {"feature": "#12", "value": 0.5}) == {
        "feature": "#12",
        "value": 0.5,
    }
    with pytest.raises(UserInputError, match="between -1 and 1"):
        coerce_options(steer, {"feature": "#12", "value": -2})
    with pytest.raises(UserInputError, match="Unknown option"):
        coerce_options(steer, {"feature": "x", "bogus": 1})


def test_batch_rejects_pairs_without_value_or_name():
    with pytest.raises(UserInputError, match='"=0.5" is not one'):
        parse_batch("=0.5")
    with pytest.raises(UserInputError, match="between -1 and 1"):
        parse_batch("pirate=2")
    with pytest.raises(UserInputError, match="Could not read the arguments: No closing quotation"):
        parse_batch("'pirate=0.5")


def test_history_respects_message_and_char_budgets_and_alternation():
    history = [
        StoredMessage("user" if i % 2 == 0 else "assistant", "ann", f"m{i}") for i in range(300)
    ]
    messages = build_messages("sys", history, max_messages=127, max_chars=10_000)
    assert len(messages) == 127  # 126 newest kept, leading assistant turn dropped, + system
    assert (messages[0].role, messages[1].content, messages[-1].content) == (
        "system",
        "ann: m174",
        "m299",
    )
    tight = build_messages("sys", history, max_messages=127, max_chars=20)
    assert [m.content for m in tight][-1] == "m299"
    doubled = [StoredMessage("user", "a", "hi"), StoredMessage("user", "b", "yo")]
    assert [m.content for m in build_messages("s", doubled, max_messages=10, max_chars=100)] == [
        "s",
        "a: hi\n\nb: yo",
    ]


def test_table_bars_scale_to_largest_value_and_truncate():
    assert bar(1.0, 1.0, 4) == "████" and bar(0.5, 1.0, 4) == "██  "
    rows = [TableRow(f"feature {i}", 1.0 / (i + 1)) for i in range(30)]
    text = render_table(Table("Top", rows), max_rows=5)
    assert text.splitlines()[1].startswith("feature 0") and "… and 25 more" in text


def test_steer_words_may_contain_apostrophes_and_quotes_only_matter_in_batches():
    assert parse("/steer children's books 0.5")[1] == {"feature": "children's books", "value": 0.5}
    assert parse("/help variant new") == ("help", {"command": "variant new"})
