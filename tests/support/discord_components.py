"""How Discord checks a message's components, for FakeDiscord: legacy action rows, and
Components v2 layouts (the IS_COMPONENTS_V2 flag).

`message_problem(body, files, existing_flags)` returns Discord's complaint about a message
payload (create or edit), or "" if Discord would take it. The rules are Discord's documented
ones: with the v2 flag there is no content, embeds, poll or sticker, at most 40 components in
all (nested ones and accessories included) and 4,000 characters across text displays; each
component type may hold only certain children; buttons need a label or emoji and a custom_id
(or a url), unique in the message; media must be a URL or an attachment:// of a file sent
with the message. Without the flag, only action rows may sit at the top.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

IS_COMPONENTS_V2 = 1 << 15
MAX_COMPONENTS = 40
MAX_TEXT_DISPLAY_CHARS = 4_000
MAX_TOP_LEVEL_LEGACY = 5
MAX_ROW_BUTTONS = 5
MAX_LABEL = 80
MAX_CUSTOM_ID = 100
MAX_GALLERY_ITEMS = 10
MAX_SECTION_TEXTS = 3

ACTION_ROW, BUTTON, STRING_SELECT = 1, 2, 3
SECTION, TEXT_DISPLAY, THUMBNAIL, MEDIA_GALLERY, FILE, SEPARATOR, CONTAINER = (
    9,
    10,
    11,
    12,
    13,
    14,
    17,
)
SELECTS = (3, 5, 6, 7, 8)
TOP_LEVEL_V2 = (ACTION_ROW, SECTION, TEXT_DISPLAY, MEDIA_GALLERY, FILE, SEPARATOR, CONTAINER)
IN_CONTAINER = (ACTION_ROW, SECTION, TEXT_DISPLAY, MEDIA_GALLERY, FILE, SEPARATOR)
Component = dict[str, Any]


def walk(components: Sequence[Component]) -> Iterator[Component]:
    """Every component, depth first, accessories included."""
    for component in components:
        yield component
        yield from walk(component.get("components") or [])
        if component.get("accessory"):
            yield from walk([component["accessory"]])


def buttons(components: Sequence[Component]) -> list[Component]:
    return [c for c in walk(components) if c.get("type") == BUTTON]


def text_of(components: Sequence[Component]) -> str:
    """All text displays' content, in order, one per line."""
    return "\n".join(c["content"] for c in walk(components) if c.get("type") == TEXT_DISPLAY)


def message_problem(
    body: dict[str, Any], filenames: Sequence[str] = (), existing_flags: int = 0
) -> str:
    """What Discord would answer to this message payload, or ""."""
    components = body.get("components") or []
    flags = (body.get("flags") or 0) | existing_flags
    if not flags & IS_COMPONENTS_V2:
        if any(c.get("type") != ACTION_ROW for c in components):
            return "components: v2 components need the IS_COMPONENTS_V2 flag"
        if len(components) > MAX_TOP_LEVEL_LEGACY:
            return "components: at most 5 action rows"
        return _each(components, ACTION_ROW, filenames)
    for field in ("content", "embeds", "poll", "sticker_ids"):
        if body.get(field):
            return f"{field}: not allowed with IS_COMPONENTS_V2"
    if "content" in body and body["content"] is not None and body["content"] != "":
        return "content: not allowed with IS_COMPONENTS_V2"
    if not components and "components" in body:
        return "components: a v2 message needs at least one component"
    everything = list(walk(components))
    if len(everything) > MAX_COMPONENTS:
        return f"components: {len(everything)} components, at most {MAX_COMPONENTS}"
    text = sum(len(c.get("content") or "") for c in everything if c.get("type") == TEXT_DISPLAY)
    if text > MAX_TEXT_DISPLAY_CHARS:
        return f"components: {text} characters of text, at most {MAX_TEXT_DISPLAY_CHARS}"
    custom_ids = [c["custom_id"] for c in everything if c.get("custom_id")]
    if len(set(custom_ids)) != len(custom_ids):
        return "components: custom_id values must be unique"
    for component in components:
        if component.get("type") not in TOP_LEVEL_V2:
            return f"components: type {component.get('type')} cannot be at the top level"
    return _each(components, None, filenames)


def _each(components: Sequence[Component], only: int | None, filenames: Sequence[str]) -> str:
    for component in components:
        if only is not None and component.get("type") != only:
            return f"components: expected type {only}, got {component.get('type')}"
        if problem := _problem(component, filenames):
            return problem
    return ""


def _problem(component: Component, filenames: Sequence[str]) -> str:
    kind = component.get("type")
    children = component.get("components") or []
    if kind == ACTION_ROW:
        return _row_problem(children, filenames)
    if kind == BUTTON:
        return _button_problem(component)
    if kind == SECTION:
        texts = [c for c in children if c.get("type") == TEXT_DISPLAY]
        if not 1 <= len(children) <= MAX_SECTION_TEXTS or len(texts) != len(children):
            return "section: 1 to 3 text displays"
        accessory = component.get("accessory") or {}
        if accessory.get("type") not in (BUTTON, THUMBNAIL):
            return "section: needs a button or thumbnail accessory"
        return _problem(accessory, filenames) or _each(children, TEXT_DISPLAY, filenames)
    if kind == TEXT_DISPLAY:
        return "" if component.get("content") else "text display: content is required"
    if kind == THUMBNAIL:
        return _media_problem(component.get("media"), filenames)
    if kind == MEDIA_GALLERY:
        items = component.get("items") or []
        if not 1 <= len(items) <= MAX_GALLERY_ITEMS:
            return "media gallery: 1 to 10 items"
        for item in items:
            if problem := _media_problem(item.get("media"), filenames):
                return problem
        return ""
    if kind == FILE:
        return _media_problem(component.get("file"), filenames, attachment_only=True)
    if kind == SEPARATOR:
        return "" if component.get("spacing", 1) in (1, 2) else "separator: spacing is 1 or 2"
    if kind == CONTAINER:
        if not children:
            return "container: needs children"
        if any(c.get("type") not in IN_CONTAINER for c in children):
            return "container: holds rows, sections, texts, galleries, files and separators"
        return _each(children, None, filenames)
    if kind in SELECTS:
        return "" if component.get("custom_id") else "select: custom_id is required"
    return f"components: unknown type {kind}"


def _row_problem(children: Sequence[Component], filenames: Sequence[str]) -> str:
    kinds = [c.get("type") for c in children]
    if not children:
        return "action row: needs components"
    if any(kind in SELECTS for kind in kinds) and len(children) != 1:
        return "action row: a select menu is alone in its row"
    if not all(kind == BUTTON or kind in SELECTS for kind in kinds):
        return "action row: holds buttons or one select menu"
    if len(children) > MAX_ROW_BUTTONS:
        return "action row: at most 5 buttons"
    return _each(children, None, filenames)


def _button_problem(button: Component) -> str:
    if not button.get("label") and not button.get("emoji"):
        return "button: needs a label or an emoji"
    if len(button.get("label") or "") > MAX_LABEL:
        return f"button: label over {MAX_LABEL} characters"
    style = button.get("style")
    if style == 5:
        return "" if button.get("url") else "button: a link button needs a url"
    custom_id = button.get("custom_id") or ""
    if not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return "button: custom_id of 1 to 100 characters is required"
    return "" if style in (1, 2, 3, 4) else f"button: unknown style {style}"


def _media_problem(media: Any, filenames: Sequence[str], *, attachment_only: bool = False) -> str:
    url = (media or {}).get("url") or ""
    if url.startswith("attachment://"):
        name = url.removeprefix("attachment://")
        return "" if name in filenames else f"media: no file {name!r} sent with the message"
    if attachment_only or not url.startswith(("http://", "https://")):
        return f"media: bad url {url!r}"
    return ""
