"""Slack text and Block Kit: escaping both ways, Replies as messages, the feature picker,
Apply/Cancel buttons, streamed columns (/compare) and 👍/👎 feedback buttons.

Everything we send goes through `escape`, so model output and echoed user text can never
notify anyone (`<!channel>`, `<@U..>`) and always renders literally.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.streaming import Column, fit_column
from bot.commands.render import render_table, shorten
from bot.commands.replies import Confirmation, Reply, Table
from bot.domain.summary import edits_summary
from bot.domain.types import FeatureRef, VariantState

SECTION_LIMIT = 3_000  # characters of mrkdwn in one section block
MAX_BLOCKS = 50
MAX_TEXT_CHARS = 35_000  # Slack cuts messages at 40,000 characters
MAX_TABLE_ROWS = 50
OPTION_TEXT_LIMIT = 75  # plain_text of a select option
MAX_OPTIONS = 100
STRENGTHS = (-0.5, -0.3, 0.3, 0.5, 0.8)

FEATURE_SELECT = "ember_feature"
STRENGTH_BUTTON = re.compile(r"^ember_strength_\d+$")
CONFIRM_BLOCK = "ember_confirm"
ACCEPT, REJECT = "ember_confirm_accept", "ember_confirm_reject"
CONFIRM_BUTTON = re.compile(rf"^({ACCEPT}|{REJECT})$")
COLUMN_TITLE_LIMIT = 150
NOTIFICATION_CHARS = 1_000  # the `text` beside the blocks of a streamed message
FEEDBACK_ACTION = "ember_feedback"
FEEDBACK_BLOCK = "ember_feedback"
MAX_FEEDBACK_VALUE = 2_000  # characters of a feedback button's value

_ENTITY = re.compile(r"<([^<>]*)>")
Block = dict[str, Any]


def escape(text: str) -> str:
    """Slack's escaping of &, < and >: control sequences become literal text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_text(text: str, bot_user_id: str | None = None) -> str:
    """Incoming Slack markup as plain words: our own mention dropped, entities readable."""

    def readable(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if bot_user_id and target == f"@{bot_user_id}":
            return ""
        if target.startswith(("@", "#")):
            return target[0] + label.lstrip("@#") if label else target
        if target.startswith("!"):
            return label or "@" + target[1:].split("^")[0]
        return label or target

    text = _ENTITY.sub(readable, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


@dataclass(frozen=True)
class SlackMessage:
    """`text` is escaped mrkdwn; with blocks it is the notification/accessibility fallback."""

    text: str
    blocks: list[Block] | None = None


@dataclass(frozen=True)
class SlackRenderer:
    """Renders core Replies for Slack, naming commands with the configured prefix."""

    prefix: str
    command_names: tuple[str, ...]

    def text(self, raw: str) -> str:
        """Escaped, with `/steer` written as the prefixed name the workspace knows."""
        escaped = escape(raw)
        if not self.prefix or not self.command_names:
            return escaped
        names = "|".join(re.escape(name) for name in self.command_names)
        return re.sub(rf"(?<![\w/])/({names})\b", rf"/{self.prefix}\1", escaped)

    def command(self, name: str) -> str:
        return f"/{self.prefix}{name}"

    def reply(self, reply: Reply) -> SlackMessage:
        if reply.confirmation is not None:
            return SlackMessage(self._limited(reply.text), self._question(reply))
        if reply.feature_choices:
            return SlackMessage(self._limited(reply.text), self._picker(reply))
        if reply.table is not None:
            return SlackMessage(self._limited(reply.text or reply.table.title), self._table(reply))
        return SlackMessage(self._limited(reply.text))

    def fallback(self, reply: Reply) -> SlackMessage:
        """The same reply without blocks, for when Slack rejects them."""
        if reply.table is None:
            return SlackMessage(self._limited(reply.text))
        table = f"```{escape(render_table(reply.table, max_rows=MAX_TABLE_ROWS))}```"
        intro = f"{self._limited(reply.text)}\n" if reply.text else ""
        return SlackMessage(intro + table)

    def columns(self, intro: str, columns: Sequence[Column]) -> SlackMessage:
        """One section per column under the intro; each column within a section's limit,
        cut with a note if longer. Slack has no side-by-side layout for long text: the
        sections stack, titled in bold."""
        blocks = self._text_sections(intro)
        for column in columns:
            title = f"*{escape(shorten(column.title, COLUMN_TITLE_LIMIT))}*\n"
            body = fit_column(column, SECTION_LIMIT - len(title), escaped_length)
            blocks.append(section(title + escape(body)))
        return SlackMessage(self.text(cut(intro, NOTIFICATION_CHARS)) or "…", blocks)

    def _limited(self, raw: str) -> str:
        return self.text(cut(raw, MAX_TEXT_CHARS))

    def _table(self, reply: Reply) -> list[Block]:
        assert reply.table is not None
        blocks = [section(self.text(reply.text))] if reply.text else []
        return blocks + table_blocks(reply.table, MAX_BLOCKS - len(blocks))

    def _question(self, reply: Reply) -> list[Block]:
        """The reply, then its question in bold with Apply / Cancel buttons under it."""
        assert reply.confirmation is not None
        body = self._table(reply) if reply.table is not None else self._text_sections(reply.text)
        question = section(f"*{escape(shorten(reply.confirmation.prompt, 300))}*")
        return [*body[: MAX_BLOCKS - 2], question, confirm_buttons(reply.confirmation)]

    def _text_sections(self, raw: str) -> list[Block]:
        lines = self.text(cut(raw, MAX_TEXT_CHARS)).split("\n") if raw else []
        return [section(chunk) for chunk in chunk_lines(lines, SECTION_LIMIT)]

    def _picker(self, reply: Reply) -> list[Block]:
        header = reply.text.split("\n", 1)[0] or "Choose a feature:"
        tip = (
            "Pick a feature and a strength, or type "
            f"`{self.command('steer')} #<index> <strength>` (-1 to 1)."
        )
        return [
            section(self.text(header)),
            {
                "type": "actions",
                "block_id": "ember_picker",
                "elements": [feature_select(reply.feature_choices), *strength_buttons(reply)],
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(tip)}]},
        ]


def escaped_length(text: str) -> int:
    return len(escape(text))


def confirm_buttons(confirmation: Confirmation) -> Block:
    """Apply (primary) and Cancel; both carry the confirmation's token."""

    def button(action_id: str, label: str, default: str) -> Block:
        text = shorten(label, OPTION_TEXT_LIMIT) or default
        return {
            "type": "button",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": text},
            "value": confirmation.token,
        }

    return {
        "type": "actions",
        "block_id": CONFIRM_BLOCK,
        "elements": [
            button(ACCEPT, confirmation.accept_label, "Apply") | {"style": "primary"},
            button(REJECT, confirmation.reject_label, "Cancel"),
        ],
    }


def without_buttons(blocks: list[Block]) -> list[Block]:
    """A posted question's blocks with its Apply / Cancel row taken out."""
    return [block for block in blocks if block.get("block_id") != CONFIRM_BLOCK]


def feedback_block(variant: VariantState) -> dict[str, Any]:
    """A context_actions block with Slack's feedback buttons for a reply made with `variant`."""
    steering = edits_summary(variant)

    def button(rating: str, label: str, description: str) -> dict[str, Any]:
        value = json.dumps({"rating": rating, "variant": variant.name, "steering": steering})
        if len(value) > MAX_FEEDBACK_VALUE:  # very long steering: keep the rating and the variant
            value = json.dumps({"rating": rating, "variant": variant.name[:100], "steering": ""})
        return {
            "text": {"type": "plain_text", "text": label},
            "value": value,
            "accessibility_label": description,
        }

    return {
        "type": "context_actions",
        "block_id": FEEDBACK_BLOCK,
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": button("good", "👍", "Good reply: I like this steering"),
                "negative_button": button("bad", "👎", "Bad reply: I don't like this steering"),
            }
        ],
    }


def section(mrkdwn: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def table_blocks(table: Table, max_blocks: int = MAX_BLOCKS) -> list[Block]:
    """A bold title, then the bar rows in code blocks, each section within Slack's limit."""
    title, *rows = render_table(table, max_rows=MAX_TABLE_ROWS).split("\n")
    chunks = chunk_lines([escape(row) for row in rows], SECTION_LIMIT - len("``````"))
    blocks = [section(f"*{escape(shorten(title, SECTION_LIMIT - 2))}*")]
    blocks += [section(f"```{chunk}```") for chunk in chunks]
    if len(blocks) > max_blocks:
        hidden = len(blocks) - max_blocks + 1
        blocks = [*blocks[: max_blocks - 1], section(f"_… {hidden} more sections not shown_")]
    return blocks


def chunk_lines(lines: list[str], limit: int) -> list[str]:
    """Join lines into chunks of at most `limit` characters; overlong lines are cut."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in (shorten(line, limit) if len(line) > limit else line for line in lines):
        if current and size + 1 + len(line) > limit:
            chunks.append("\n".join(current))
            current, size = [], 0
        size += len(line) + (1 if current else 0)
        current.append(line)
    if current:
        chunks.append("\n".join(current))
    return chunks


def feature_select(choices: list[FeatureRef]) -> Block:
    options = [
        {
            "text": {
                "type": "plain_text",
                "text": shorten(f"#{f.index_in_sae} {f.label}", OPTION_TEXT_LIMIT),
            },
            "value": str(f.index_in_sae),
        }
        for f in choices[:MAX_OPTIONS]
    ]
    return {
        "type": "static_select",
        "action_id": FEATURE_SELECT,
        "placeholder": {"type": "plain_text", "text": "Choose a feature"},
        "initial_option": options[0],
        "options": options,
    }


def strength_buttons(reply: Reply) -> list[Block]:
    """One button per strength; each carries the first match, used if nothing was selected."""
    default = reply.feature_choices[0].index_in_sae
    return [
        {
            "type": "button",
            "action_id": f"ember_strength_{number}",
            "text": {"type": "plain_text", "text": f"{strength:+.1f}"},
            "value": json.dumps({"feature": default, "value": strength}),
        }
        for number, strength in enumerate(STRENGTHS)
    ]


def selected_feature(state: dict[str, Any]) -> int | None:
    """The feature chosen in a picker's select menu, from a block_actions payload's state."""
    for block in state.get("values", {}).values():
        option = block.get(FEATURE_SELECT, {}).get("selected_option")
        if option:
            return int(option["value"])
    return None


def cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, line breaks kept (unlike render.shorten)."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
