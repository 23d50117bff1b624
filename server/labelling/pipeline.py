"""One labelling run: collect (or resume collecting), then explain and score every feature,
then write the label file, with a progress bar and ETA per stage (tqdm, on stderr)."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.labelling.collect import CollectConfig, Collection, collect, fingerprint
from server.labelling.corpus import Corpus
from server.labelling.explainer import Explainer, ExplainerError
from server.labelling.output import WorkFolder, label_record, write_labels
from server.labelling.prompts import UnusableAnswer
from server.labelling.score import FeatureLabel, ScoringConfig, label_feature
from server.model.presets import ModelBundle

# Some unusable answers are normal for a real model; this many in a row (or this share of
# those asked, whichever is more) means the explainer does not follow the prompt at all.
UNUSABLE_LIMIT = 3
UNUSABLE_SHARE = 0.2


class LabellingError(RuntimeError):
    """The run stopped; its work so far is kept for --resume (one line, for the CLI)."""


@dataclass
class LabelRun:
    out: Path
    features: list[int]
    explainer_url: str
    explainer_model: str | None = None
    api_key: str | None = None
    resume: bool = False
    override: bool = False
    concurrency: int = 8
    retries: int = 3
    checkpoint_every: float = 120.0
    collect: CollectConfig = field(default_factory=CollectConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    progress: bool = True


@dataclass(frozen=True)
class Summary:
    labelled: int
    silent: int  # never fired in the corpus
    unusable: int
    mean_score: float | None
    explainer: str


def check_work_folder(run: LabelRun) -> WorkFolder:
    work = WorkFolder(run.out)
    if work.exists() and not run.resume:
        raise LabellingError(
            f"{work.path} holds an unfinished run: pass --resume to continue it, or delete it "
            "to start over."
        )
    return work


async def connect(run: LabelRun) -> Explainer:
    """The explainer, checked to answer (before any hour-long collection starts)."""
    explainer = Explainer(
        run.explainer_url,
        model=run.explainer_model,
        api_key=run.api_key,
        concurrency=run.concurrency,
        retries=run.retries,
    )
    try:
        await explainer.connect()
    except BaseException:
        await explainer.__aexit__()
        raise
    return explainer


def collect_stage(
    bundle: ModelBundle, corpus: Corpus, run: LabelRun, work: WorkFolder
) -> Collection:
    device = bundle.sae.W_enc.device
    collection = Collection(run.features, run.collect, device)
    stamp = fingerprint(bundle, corpus, run.collect, run.features)
    if run.resume and work.checkpoint.exists():
        collection.restore(work.checkpoint, stamp)
    work.create()
    if collection.complete:
        return collection
    with _bar(run, corpus.size_bytes, "collect", "B", unit_scale=True) as bar:

        def advance(count: int, size: int) -> None:
            bar.update(size)
            bar.set_postfix(windows=collection.windows_done, refresh=False)

        collect(
            bundle,
            corpus,
            collection,
            checkpoint=work.checkpoint,
            fingerprint=stamp,
            checkpoint_every=run.checkpoint_every,
            on_batch=advance,
        )
    return collection


async def explain_stage(
    bundle: ModelBundle,
    collection: Collection,
    explainer: Explainer,
    run: LabelRun,
    work: WorkFolder,
) -> Summary:
    done = work.finished()

    @functools.cache
    def token_text(token: int) -> str:
        return str(bundle.tokenizer.decode([token]))

    todo = [p for p, index in enumerate(collection.features) if index not in done]
    silent = unusable = asked = 0
    examples: list[str] = []
    with _bar(run, len(collection.features), "explain", "feature") as bar:
        bar.update(len(collection.features) - len(todo))

        async def one(position: int) -> None:
            nonlocal silent, unusable, asked
            try:
                result = await label_feature(
                    explainer, collection, position, token_text, run.scoring
                )
            except UnusableAnswer as error:
                unusable += 1
                examples.append(str(error))
                _check_usable(unusable, asked + 1, examples[0], explainer.model, done=False)
            else:
                if result is None:
                    silent += 1
                else:
                    work.append(_record(result, explainer.model, run.override))
            asked += 1
            bar.update(1)

        queue = iter(todo)  # features in order, `concurrency` at a time

        async def worker() -> None:
            for position in queue:
                await one(position)

        tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, run.concurrency))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if examples:
        _check_usable(unusable, asked, examples[0], explainer.model, done=True)
    labelled = work.finished()
    scores = [r["score"] for r in labelled.values() if isinstance(r.get("score"), float | int)]
    return Summary(
        labelled=len(labelled),
        silent=silent,
        unusable=unusable,
        mean_score=sum(scores) / len(scores) if scores else None,
        explainer=explainer.model,
    )


def _check_usable(unusable: int, asked: int, example: str, model: str, *, done: bool) -> None:
    """Midway, stop at UNUSABLE_LIMIT unusable answers (or the share, if more); at the end,
    fail when more than UNUSABLE_SHARE of the features asked about got none."""
    limit = UNUSABLE_SHARE * asked if done else max(UNUSABLE_LIMIT, UNUSABLE_SHARE * asked)
    if unusable and (unusable > limit if done else unusable >= limit):
        raise ExplainerError(
            f"The explainer ({model}) does not answer in the shape asked for: {unusable} of "
            f"{asked} features got no usable answer ({example}); use a stronger chat model "
            "with --explainer."
        )


def _record(result: FeatureLabel, model: str, override: bool) -> dict[str, Any]:
    return label_record(result.index, result.label, result.score, model, override=override)


def finish(run: LabelRun, work: WorkFolder) -> None:
    write_labels(run.out, list(work.finished().values()))
    work.remove()


def _bar(
    run: LabelRun, total: int | None, stage: str, unit: str, **options: Any
) -> AbstractContextManager[Any]:
    if not run.progress:
        return nullcontext(_SilentBar())
    return tqdm(total=total, desc=stage, unit=unit, dynamic_ncols=True, **options)


class _SilentBar:
    n = 0

    def update(self, count: int) -> None:
        self.n += count

    def set_postfix(self, **_values: Any) -> None:
        pass
