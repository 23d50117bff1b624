"""Feature labels from Neuronpedia's public dataset exports, downloaded into a local cache.

Neuronpedia publishes each SAE's explanations as gzipped JSON Lines batches,
`{base}/<model id>/<source id>/explanations/batch-N.jsonl.gz`, N = 0, 1, 2, … . No listing is
published that a plain mirror would also serve, so the batches are fetched in order until one is
missing: a 404, or S3's 403 for a missing key where listing is not allowed. A 403 on batch 0 is
an error (a private or misspelt source looks the same); after batch 0 it ends the list. The base is
`EMBER_LABELS_URL` (or `--labels-url`), by default Neuronpedia's bucket.

The cache (`EMBER_LABELS_CACHE`, by default ~/.cache/ember-bot/labels) holds
`<model id>/<source id>/explanations/batch-N.jsonl.gz` and `<model id>/<source id>/complete.json`.
A download runs in `<source id>.partial/` beside it: each batch goes to a temporary file, is
checked to be a whole gzip stream, and only then renamed into place; the folder becomes
`<source id>` (with `complete.json`, the batch count) once the last batch is in. So an interrupted
download is never taken for labels, and the next run resumes after the last whole batch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import uuid
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from huggingface_hub.utils import tqdm

LABELS_URL_ENV = "EMBER_LABELS_URL"
LABELS_CACHE_ENV = "EMBER_LABELS_CACHE"
DEFAULT_LABELS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/v1"
EXPLANATIONS = "explanations"
COMPLETE = "complete.json"
PARTIAL = ".partial"
NOT_FOUND = 404
FORBIDDEN = 403  # S3's answer for a missing key when the bucket does not allow listing
TIMEOUT = httpx.Timeout(30.0, read=120.0)
CHUNK = 1 << 20
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MIRROR_HINT = "--labels-url or EMBER_LABELS_URL can point at a mirror"


class LabelsDownloadError(ValueError):
    """A labels download that cannot complete; the message is one line for the user."""


def labels_url(override: str | None = None) -> str:
    """The exports base URL: `override`, else $EMBER_LABELS_URL, else Neuronpedia's bucket."""
    return (override or os.environ.get(LABELS_URL_ENV) or DEFAULT_LABELS_URL).rstrip("/")


def cache_root() -> Path:
    """$EMBER_LABELS_CACHE, else ~/.cache/ember-bot/labels (under $XDG_CACHE_HOME if set)."""
    if configured := os.environ.get(LABELS_CACHE_ENV):
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ember-bot" / "labels"


def export_url(np_model: str, np_source: str, base_url: str | None = None) -> str:
    """The `explanations/` folder of one SAE's export under the exports base."""
    return f"{labels_url(base_url)}/{_safe(np_model)}/{_safe(np_source)}/{EXPLANATIONS}"


def cached_folder(np_model: str, np_source: str) -> Path:
    """Where the labels of (model id, source id) live once complete."""
    return cache_root() / _safe(np_model) / _safe(np_source)


def fetch_labels(
    np_model: str,
    np_source: str,
    *,
    base_url: str | None = None,
    offline: bool = False,
    command: str = "ember-bot fetch",
) -> Path:
    """The local `explanations/` folder of Neuronpedia's labels for (model id, source id),
    downloading them first unless the cache holds them whole. `offline`: never download; a
    missing cache is then an error naming `command` as the way to fill it."""
    return _fetch(
        export_url(np_model, np_source, base_url),
        cached_folder(np_model, np_source),
        f"{np_model}/{np_source}",
        offline=offline,
        command=command,
    )


def fetch_labels_folder(
    url: str, *, offline: bool = False, command: str = "ember-bot fetch"
) -> Path:
    """Like fetch_labels, for the http(s) URL of an export's `explanations/` folder."""
    url = url.rstrip("/")
    parts = [part for part in urlsplit(url).path.split("/") if part]
    if len(parts) >= 3 and parts[-1] == EXPLANATIONS and all(map(SAFE_NAME.match, parts[-3:-1])):
        what = f"{parts[-3]}/{parts[-2]}"
        target = cache_root() / parts[-3] / parts[-2]
    else:
        what = url
        target = cache_root() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16]
    return _fetch(url, target, what, offline=offline, command=command)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _safe(name: str) -> str:
    if not SAFE_NAME.match(name):
        raise LabelsDownloadError(f"{name!r} is not a Neuronpedia model or source id.")
    return name


# ---- downloading -------------------------------------------------------------------------------


def _fetch(url: str, target: Path, what: str, *, offline: bool, command: str) -> Path:
    if (target / COMPLETE).is_file():
        return target / EXPLANATIONS
    if offline:
        raise LabelsDownloadError(
            f"The labels {what} are not in the local cache and HF_HUB_OFFLINE=1 is set: "
            f"run `{command}` first."
        )
    staging = target.with_name(target.name + PARTIAL)
    batches = staging / EXPLANATIONS
    try:
        batches.mkdir(parents=True, exist_ok=True)
        count = _download_batches(url, batches, what)
        _write_atomically(staging / COMPLETE, json.dumps({"url": url, "batches": count}) + "\n")
        _publish(staging, target)
    except OSError as error:
        raise LabelsDownloadError(
            f"Cannot write the labels {what} under {staging}: {error.strerror or error}; free "
            f"space there or point {LABELS_CACHE_ENV} at another folder, then run again."
        ) from None
    finally:
        if batches.is_dir() and not any(batches.iterdir()):  # nothing whole to resume from
            shutil.rmtree(staging, ignore_errors=True)
    return target / EXPLANATIONS


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished `staging` folder to `target`, unless another process did first."""
    try:
        if target.exists() and not (target / COMPLETE).is_file():
            shutil.rmtree(target)  # stale: a folder only ever becomes `target` when complete
        staging.rename(target)
    except OSError:  # lost a race: another process finished the same download first
        if not (target / COMPLETE).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _download_batches(url: str, folder: Path, what: str) -> int:
    """Fetch batch-0, batch-1, … into `folder` (keeping whole ones already there) until one is
    missing; the number of batches."""
    count = 0
    with (
        httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client,
        tqdm(desc=f"labels {what}", unit="B", unit_scale=True, unit_divisor=1024) as bar,
    ):
        while True:
            name = f"batch-{count}.jsonl.gz"
            if not (folder / name).is_file():
                batch_url = f"{url}/{name}"
                try:
                    found = _download_batch(client, batch_url, folder / name, bar)
                except httpx.HTTPError as error:
                    again = "Run again to resume; " if count else _forbidden_hint(error)
                    raise LabelsDownloadError(
                        f"Cannot download the labels {what} from {batch_url}: {_describe(error)}. "
                        f"{again}{MIRROR_HINT}."
                    ) from None
                if not found:
                    break
            count += 1
            bar.set_postfix_str(f"{count} batches")
    if count == 0:
        raise LabelsDownloadError(
            f"No labels export at {url}/batch-0.jsonl.gz (not found): check the Neuronpedia model "
            f"and source ids, or note that {MIRROR_HINT}."
        )
    return count


def _download_batch(client: httpx.Client, url: str, path: Path, bar: tqdm) -> bool:
    """Download one batch to `path` through a temporary file; False if the server has none."""
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with client.stream("GET", url) as response:
            if response.status_code == NOT_FOUND or (
                response.status_code == FORBIDDEN and path.name != "batch-0.jsonl.gz"
            ):
                return False
            response.raise_for_status()
            with temporary.open("wb") as stream:
                for chunk in response.iter_raw(CHUNK):  # the .gz bytes as stored
                    stream.write(chunk)
                    bar.update(len(chunk))
        _check_gzip(temporary, url)
        os.replace(temporary, path)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _check_gzip(path: Path, url: str) -> None:
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise LabelsDownloadError(
            f"{url} did not arrive whole ({error}); run again to resume."
        ) from None


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _forbidden_hint(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.HTTPStatusError) and error.response.status_code == FORBIDDEN:
        return "S3 answers 403 for a missing or private export: check the model and source ids; "
    return ""


def _describe(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
