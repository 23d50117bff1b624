"""Collecting each feature's examples in one pass over the corpus, in bounded memory.

Every window of the corpus goes through the model up to the SAE's layer (the server's
HookedModel, stopped right after that layer) and the SAE. Per feature we keep only:
- its `top_k` windows by peak activation (tokens and per-token activations);
- a uniform sample of `samples` of its other activating windows: each (window, feature) pair
  gets a pseudo-random key from a hash of the two, and the highest keys are kept, which is a
  reservoir sample that needs no random state (so a resumed run keeps the same sample);
- and, shared by all features, a pool of `pool` random windows with which features fire in
  them, for the non-activating examples.
That is O(features x (top_k + samples) x context) memory whatever the corpus size. The state is
saved atomically to a checkpoint every `checkpoint_every` seconds and at the end, with a
fingerprint of everything that shapes it, so --resume continues only the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from server.engine.hooked_model import HookedModel
from server.labelling.corpus import Corpus, windows
from server.model.presets import ModelBundle

NO_TOKEN = -1
HASH_BITS = 24
HALF_MAX = 65504.0  # activations are kept in float16


class CheckpointMismatch(ValueError):
    """--resume was given a checkpoint of a different run (one line, for the CLI)."""


@dataclass(frozen=True)
class CollectConfig:
    context: int = 32  # tokens per window
    top_k: int = 20  # strongest windows kept per feature
    samples: int = 10  # other activating windows kept per feature (uniform sample)
    pool: int = 64  # shared windows for non-activating examples
    batch_size: int = 32  # windows per forward pass
    max_windows: int | None = None  # stop after this many windows (a streamed dataset)


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    activations: list[float]


class RunningTopK:
    """For each tracked feature, the `k` windows with the highest score so far."""

    def __init__(self, features: int, k: int, context: int, device: torch.device) -> None:
        self.scores = torch.full((features, k), -torch.inf, device=device)
        self.windows = torch.full((features, k), -1, dtype=torch.long, device=device)
        self.tokens = torch.full((features, k, context), NO_TOKEN, dtype=torch.int32, device=device)
        self.activations = torch.zeros((features, k, context), dtype=torch.float16, device=device)

    def update(self, scores: Tensor, window_ids: Tensor, tokens: Tensor, acts: Tensor) -> None:
        """Merge a batch: `scores` [windows, features] (-inf: not a candidate), `window_ids`
        [windows], `tokens` [windows, context], `acts` [windows, context, features]. Only the
        features whose best new score beats their k-th kept one are touched (after the first
        batches, few: that is what keeps a batch cheap with many features)."""
        k = self.scores.shape[1]
        values, rows = torch.topk(scores.T, min(k, scores.shape[0]), dim=1)  # [features, <=k]
        changed = torch.nonzero(values[:, 0] > self.scores[:, -1]).flatten()
        if changed.numel() == 0:
            return
        values, rows = values[changed], rows[changed]
        entering = values > self.scores[changed, -1:]
        values = torch.where(entering, values, -torch.inf)
        feature, candidate = torch.nonzero(entering, as_tuple=True)
        candidate_acts = torch.zeros(
            (*rows.shape, acts.shape[1]), dtype=torch.float16, device=acts.device
        )
        picked = acts[rows[feature, candidate], :, changed[feature]]  # only what enters
        candidate_acts[feature, candidate] = picked.clamp(max=HALF_MAX).half()
        merged = torch.cat([self.scores[changed], values], dim=1)
        best, pick = torch.topk(merged, k, dim=1)
        every = pick[:, :, None].expand(-1, -1, self.tokens.shape[2])
        windows = torch.cat([self.windows[changed], window_ids[rows]], dim=1).gather(1, pick)
        kept_tokens = torch.cat([self.tokens[changed], tokens[rows]], dim=1).gather(1, every)
        kept_acts = torch.cat([self.activations[changed], candidate_acts], dim=1).gather(1, every)
        self.scores[changed] = best
        self.windows[changed] = windows
        self.tokens[changed] = kept_tokens
        self.activations[changed] = kept_acts

    def examples(self, position: int) -> list[tuple[int, Example]]:
        """The kept windows of the feature at `position`, best first, with their window ids."""
        kept = torch.isfinite(self.scores[position]).tolist()
        ids = self.windows[position].tolist()
        tokens, acts = self.tokens[position].tolist(), self.activations[position].float().tolist()
        rows = zip(ids, tokens, acts, kept, strict=True)
        return [(window, _trimmed(t, a)) for window, t, a, keep in rows if keep]

    def state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).cpu() for name in _TOPK_FIELDS}

    def restore(self, state: dict[str, Tensor], prefix: str) -> None:
        for name in _TOPK_FIELDS:
            setattr(self, name, state[f"{prefix}{name}"].to(self.scores.device))


_TOPK_FIELDS = ("scores", "windows", "tokens", "activations")


class WindowPool:
    """A uniform sample of windows (by hashed key), with the features that fire in each."""

    def __init__(self, size: int, features: int, context: int, device: torch.device) -> None:
        self.keys = torch.full((size,), -torch.inf, device=device)
        self.tokens = torch.full((size, context), NO_TOKEN, dtype=torch.int32, device=device)
        self.active = torch.zeros((size, features), dtype=torch.bool, device=device)

    def update(self, window_ids: Tensor, tokens: Tensor, active: Tensor) -> None:
        keys = _hash_keys(window_ids, torch.tensor([-1], device=window_ids.device))[:, 0]
        merged = torch.cat([self.keys, keys])
        self.keys, pick = torch.topk(merged, self.keys.shape[0])
        self.tokens = torch.cat([self.tokens, tokens])[pick]
        self.active = torch.cat([self.active, active])[pick]

    def quiet_examples(self, position: int, count: int) -> list[Example]:
        """Up to `count` pooled windows in which the feature never fires."""
        filled = torch.isfinite(self.keys) & ~self.active[:, position]
        rows = torch.nonzero(filled).flatten()[:count].tolist()
        return [_trimmed(self.tokens[row].tolist(), [0.0] * self.tokens.shape[1]) for row in rows]

    def state(self) -> dict[str, Tensor]:
        return {
            "pool_keys": self.keys.cpu(),
            "pool_tokens": self.tokens.cpu(),
            "pool_active": self.active.cpu(),
        }

    def restore(self, state: dict[str, Tensor]) -> None:
        device = self.keys.device
        self.keys = state["pool_keys"].to(device)
        self.tokens = state["pool_tokens"].to(device)
        self.active = state["pool_active"].to(device)


def _trimmed(tokens: list[int], activations: list[float]) -> Example:
    length = next((i for i, token in enumerate(tokens) if token == NO_TOKEN), len(tokens))
    return Example(tokens[:length], activations[:length])


def _hash_keys(window_ids: Tensor, features: Tensor) -> Tensor:
    """A pseudo-random float in [0, 1) per (window, feature): the same in every run."""
    mixed = window_ids[:, None] * 2654435761 + (features[None, :] + 1) * 2246822519
    mixed = mixed & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 15)) * 2246822519) & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 13)) * 3266489917) & 0xFFFFFFFF
    mixed = mixed ^ (mixed >> 16)
    return (mixed & ((1 << HASH_BITS) - 1)).float() / (1 << HASH_BITS)


class _Captured(Exception):
    """Raised from the layer hook once the residual stream is captured: nothing after it runs."""


class _CaptureResidual:
    """A Steering for HookedModel that records the hooked layer's output and stops the pass."""

    stop_after_layer = True
    track_gradient = False

    def __init__(self) -> None:
        self.residual: Tensor | None = None

    def __call__(self, hidden: Tensor) -> Tensor:
        self.residual = hidden.detach()
        raise _Captured


class Collection:
    """Examples of the tracked `features` (SAE indices), gathered window by window."""

    def __init__(self, features: list[int], config: CollectConfig, device: torch.device) -> None:
        self.features = features
        self.config = config
        self.device = device
        count = len(features)
        self.top = RunningTopK(count, config.top_k, config.context, device)
        self.sampled = RunningTopK(count, config.samples, config.context, device)
        self.pool = WindowPool(config.pool, count, config.context, device)
        self.windows_done = 0
        self.complete = False
        self._feature_ids = torch.tensor(features, device=device)

    def add(self, tokens: Tensor, acts: Tensor) -> None:
        """One batch: `tokens` [windows, context] (NO_TOKEN past each end), `acts` [windows,
        context, tracked features] (zero past each end)."""
        window_ids = torch.arange(tokens.shape[0], device=self.device) + self.windows_done
        peaks = acts.amax(dim=1)
        active = peaks > 0
        self.top.update(torch.where(active, peaks, -torch.inf), window_ids, tokens, acts)
        keys = _hash_keys(window_ids, self._feature_ids)
        self.sampled.update(torch.where(active, keys, -torch.inf), window_ids, tokens, acts)
        self.pool.update(window_ids, tokens, active)
        self.windows_done += tokens.shape[0]

    def top_examples(self, position: int) -> list[Example]:
        return [example for _, example in self.top.examples(position)]

    def sampled_examples(self, position: int) -> list[Example]:
        """The uniform sample, less windows that are also among the top ones."""
        top = {window for window, _ in self.top.examples(position)}
        return [ex for window, ex in self.sampled.examples(position) if window not in top]

    def quiet_examples(self, position: int, count: int) -> list[Example]:
        return self.pool.quiet_examples(position, count)

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        """Write the state to `path` atomically (a temporary file renamed over it)."""
        state: dict[str, Any] = {
            "fingerprint": fingerprint,
            "windows_done": self.windows_done,
            "complete": self.complete,
            **{f"top_{k}": v for k, v in self.top.state().items()},
            **{f"sampled_{k}": v for k, v in self.sampled.state().items()},
            **self.pool.state(),
        }
        temporary = path.with_name(path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)

    def restore(self, path: Path, fingerprint: dict[str, Any]) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["fingerprint"] != fingerprint:
            changed = sorted(
                key
                for key in fingerprint.keys() | state["fingerprint"].keys()
                if fingerprint.get(key) != state["fingerprint"].get(key)
            )
            raise CheckpointMismatch(
                f"The checkpoint at {path} is of a different run ({', '.join(changed)} changed); "
                "run with the same options, or delete it to start over."
            )
        self.windows_done = int(state["windows_done"])
        self.complete = bool(state["complete"])
        self.top.restore(state, "top_")
        self.sampled.restore(state, "sampled_")
        self.pool.restore(state)


def fingerprint(
    bundle: ModelBundle, corpus: Corpus, config: CollectConfig, features: list[int]
) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint's run."""
    return {
        "model": bundle.model_id,
        "sae": bundle.sae_id,
        "layer": bundle.layer,
        "d_sae": bundle.sae.d_sae,
        "corpus": corpus.describe(),
        "features": hashlib.sha256(repr(features).encode()).hexdigest()[:16],
        **asdict(config),
    }


def collect(
    bundle: ModelBundle,
    corpus: Corpus,
    collection: Collection,
    *,
    checkpoint: Path,
    fingerprint: dict[str, Any],
    checkpoint_every: float = 120.0,
    on_batch: Callable[[int, int], None] | None = None,
) -> None:
    """Run the rest of the corpus into `collection` (resuming after its windows_done), saving to
    `checkpoint` every `checkpoint_every` seconds and when done. `on_batch(windows, bytes)`
    reports progress (it may raise KeyboardInterrupt: the last checkpoint stays)."""
    config = collection.config
    hooked = HookedModel(bundle.model, bundle.layer)
    tokenizer = bundle.tokenizer
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    every_feature = collection.features == list(range(bundle.sae.d_sae))
    columns = (
        None if every_feature else torch.tensor(collection.features, device=bundle.sae.W_enc.device)
    )
    last_save = time.monotonic()
    try:
        for batch, size in _batches(corpus, tokenizer, collection):
            tokens, acts = _encode(hooked, bundle, batch, prefix, pad, columns, config.context)
            collection.add(tokens.to(collection.device), acts.to(collection.device))
            if time.monotonic() - last_save >= checkpoint_every:
                collection.save(checkpoint, fingerprint)
                last_save = time.monotonic()
            if on_batch is not None:
                on_batch(len(batch), size)
    finally:
        hooked.close()
    collection.complete = True
    collection.save(checkpoint, fingerprint)


def _batches(
    corpus: Corpus, tokenizer: Any, collection: Collection
) -> Iterator[tuple[list[list[int]], int]]:
    config = collection.config
    remaining = None if config.max_windows is None else config.max_windows - collection.windows_done
    batch: list[list[int]] = []
    size = 0
    stream = windows(corpus, tokenizer, config.context, skip=collection.windows_done)
    for window, read in stream:
        if remaining is not None and remaining <= len(batch):
            break
        batch.append(window)
        size += read
        if len(batch) == config.batch_size:
            yield batch, size
            if remaining is not None:
                remaining -= len(batch)
            batch, size = [], 0
    if batch:
        yield batch, size


def _encode(
    hooked: HookedModel,
    bundle: ModelBundle,
    batch: list[list[int]],
    prefix: list[int],
    pad: int,
    columns: Tensor | None,
    context: int,
) -> tuple[Tensor, Tensor]:
    """Tokens [windows, context] (NO_TOKEN padded) and the tracked features' activations
    [windows, context, features] (zero on padding); `columns` None tracks every feature."""
    width = len(prefix) + context
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    tokens = torch.full((len(batch), context), NO_TOKEN, dtype=torch.int32)
    for row, window in enumerate(batch):
        ids[row, : len(prefix) + len(window)] = torch.tensor(prefix + window)
        mask[row, : len(prefix) + len(window)] = 1
        tokens[row, : len(window)] = torch.tensor(window, dtype=torch.int32)
    capture = _CaptureResidual()
    with torch.inference_mode(), hooked.steered(capture), contextlib.suppress(_Captured):
        hooked.model(input_ids=ids.to(hooked.device), attention_mask=mask.to(hooked.device))
    assert capture.residual is not None
    sae = bundle.sae
    residual = capture.residual[:, len(prefix) :].to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
    with torch.inference_mode():
        acts = sae.encode(residual)
        if columns is not None:
            acts = acts[..., columns]
        acts = acts.float()
        if not bool(mask.all()):  # padding past a document's end fires nothing
            acts.mul_(mask[:, len(prefix) :, None].to(acts.device))
    return tokens, acts
