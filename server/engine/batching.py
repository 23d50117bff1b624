"""Several generations' KV caches as one left-padded batch, so one forward pass decodes them all.

Each row holds one generation's keys and values, right-aligned: a shorter history is padded on
the left and the attention mask hides the padding. Position ids count each row's own tokens, so
a row's rotary positions do not depend on its neighbours, and a row's distance to any earlier
token is the same in the batch as alone (sliding-window masks stay right). New rows arrive
together, prefilled in one left-padded forward pass of their own (`prefill_inputs`), and join;
rows leave when their generation ends, and padding columns that every remaining row has are
trimmed away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar, cast

import torch
from transformers import DynamicCache

Row = TypeVar("Row")


class _KeysAndValues(Protocol):
    keys: torch.Tensor  # [rows, heads, tokens, head_dim]
    values: torch.Tensor


def row_cache() -> DynamicCache:
    """An empty cache for a prefill. Plain full-attention layers (no config: sliding-window
    layers would drop old tokens), so that rows of any length can join a batch."""
    return DynamicCache()


def prefill_inputs(
    prompts: Sequence[Sequence[int]], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for several prompts at once, left-padded to the longest, and their mask
    ([prompts, longest], True at real tokens)."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    ids, mask = ids.to(device), mask.to(device)
    if bool(mask.all()):  # the model's own mask and positions are exactly right
        return {"input_ids": ids}, mask
    positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
    return {"input_ids": ids, "attention_mask": mask.long(), "position_ids": positions}, mask


class PaddedBatch(Generic[Row]):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clear()

    def clear(self) -> None:
        """Drop every row."""
        self.rows: list[Row] = []
        self.cache = row_cache()
        self._mask = torch.ones(0, 0, dtype=torch.bool, device=self.device)  # True at real tokens
        self._lengths = torch.zeros(0, dtype=torch.long, device=self.device)  # tokens per row
        self._padded = False

    def join(self, rows: Sequence[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add `rows`, whose prefill filled `cache` (a batch of their own, padded as `mask`)."""
        if not self.rows:
            self.cache, self._mask = cache, mask
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
                mine.keys = _stack_right_aligned(mine.keys, theirs.keys, width, dim=-2)
                mine.values = _stack_right_aligned(mine.values, theirs.values, width, dim=-2)
            self._mask = _stack_right_aligned(self._mask, mask, width, dim=-1)
        self._lengths = torch.cat([self._lengths, mask.sum(dim=1)])
        self.rows.extend(rows)
        self._padded = not bool(self._mask.all())

    def keep(self, rows: Sequence[Row]) -> None:
        """Keep only `rows` (the generations still decoding), in that order."""
        if list(rows) == self.rows:
            return
        if not rows:
            self.clear()
            return
        index = torch.tensor([self.rows.index(row) for row in rows], device=self.device)
        mask = self._mask[index]
        first = int(mask.any(dim=0).to(torch.int8).argmax())  # the first column still in use
        for layer in _layers(self.cache):  # each on its own layer's device
            kept = index.to(layer.keys.device)
            layer.keys = layer.keys[kept, :, first:]
            layer.values = layer.values[kept, :, first:]
        self._mask = mask[:, first:]
        self._lengths = self._lengths[index]
        self.rows = list(rows)
        self._padded = not bool(self._mask.all())

    def inputs(self, tokens: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for one new token per row (in row order), the cache aside."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        if not self._padded:  # the model's own mask and positions are exactly right
            return {"input_ids": ids}
        mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        return {
            "input_ids": ids,
            "attention_mask": mask.long(),
            "position_ids": self._lengths.unsqueeze(1),
        }

    def advance(self) -> None:
        """Record the token every row just added to the cache."""
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], dim=1)
        self._lengths = self._lengths + 1


def _layers(cache: DynamicCache) -> list[_KeysAndValues]:
    """The cache's layers, which row_cache makes plain tensors of keys and values."""
    return cast(list[_KeysAndValues], cache.layers)


def _stack_right_aligned(
    upper: torch.Tensor, lower: torch.Tensor, width: int, *, dim: int
) -> torch.Tensor:
    """`upper` above `lower` (batch dimension 0), each left-padded with zeros to `width` along
    `dim`."""
    return torch.cat([_pad_left(upper, width, dim), _pad_left(lower, width, dim)])


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
