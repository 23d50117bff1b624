"""PNG charts for /inspect, drawn headless with matplotlib's Agg canvas (no pyplot state).

Drawing takes tens of milliseconds of CPU: call these from a worker thread
(`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bot.commands.render import shorten
from bot.domain.types import TokenActivation

# Labels and model text may hold characters the bundled font lacks; a box is fine, a warning
# per glyph in the logs is not.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)

WIDTH_INCHES = 9.0
DPI = 100
TOKENS_PER_ROW = 10
MAX_TOKENS = 400
TOKEN_CHARS = 10
LABEL_CHARS = 48

TokenGroup = tuple[str, Sequence[TokenActivation]]  # (who wrote it, its tokens)


def feature_chart(rows: Sequence[tuple[str, float]], title: str) -> bytes:
    """Horizontal bars, strongest on top: one per (label, activation)."""
    count = max(1, len(rows))
    figure = _figure(height=1.2 + 0.42 * count)
    axes = figure.add_subplot()
    labels = [_plain(shorten(label, LABEL_CHARS)) for label, _ in reversed(rows)]
    values = [value for _, value in reversed(rows)]
    bars = axes.barh(range(len(values)), values, color="#e4572e")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.bar_label(bars, fmt="%.3g", padding=3, fontsize=9)
    axes.set_xlabel("activation")
    axes.set_title(_plain(title))
    axes.margins(x=0.12)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def token_heatmap(groups: Sequence[TokenGroup], title: str) -> bytes:
    """The tokens as a grid of cells, TOKENS_PER_ROW to a row, shaded by activation."""
    rows, row_labels = _token_rows(groups)
    peak = max((t.activation for row in rows for t in row), default=0.0) or 1.0
    figure = _figure(height=1.4 + 0.38 * max(1, len(rows)))
    axes = figure.add_subplot()
    grid = [
        [row[i].activation if i < len(row) else math.nan for i in range(TOKENS_PER_ROW)]
        for row in rows
    ] or [[math.nan] * TOKENS_PER_ROW]
    cmap = colormaps["YlOrRd"].with_extremes(bad="white")
    image = axes.imshow(grid, cmap=cmap, vmin=0, vmax=peak, aspect="auto")
    for y, row in enumerate(rows):
        for x, token in enumerate(row):
            dark = token.activation > 0.6 * peak
            color = "white" if dark else "black"
            axes.text(
                x, y, _cell_text(token.token), ha="center", va="center", fontsize=8, color=color
            )
    axes.set_xticks([])
    axes.set_yticks(range(len(row_labels)), labels=row_labels)
    axes.tick_params(length=0)
    axes.set_title(_plain(title))
    figure.colorbar(image, ax=axes, label="activation", fraction=0.04, pad=0.02)
    return _png(figure)


def _token_rows(groups: Sequence[TokenGroup]) -> tuple[list[list[TokenActivation]], list[str]]:
    """Each group's tokens wrapped into rows; a row is labelled with its group's name when it
    starts that group. At most MAX_TOKENS tokens are drawn."""
    rows: list[list[TokenActivation]] = []
    labels: list[str] = []
    budget = MAX_TOKENS
    for name, tokens in groups:
        shown = list(tokens)[:budget]
        budget -= len(shown)
        for start in range(0, len(shown), TOKENS_PER_ROW):
            rows.append(shown[start : start + TOKENS_PER_ROW])
            labels.append(name if start == 0 else "")
    return rows, labels


def _cell_text(token: str) -> str:
    text = token.replace("\n", "⏎").strip() or "␣"
    return _plain(shorten(text, TOKEN_CHARS))


def _plain(text: str) -> str:
    """Text matplotlib draws literally: `$` would otherwise start mathtext."""
    return text.replace("$", r"\$")


def _figure(height: float) -> Figure:
    figure = Figure(figsize=(WIDTH_INCHES, min(height, 30.0)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
