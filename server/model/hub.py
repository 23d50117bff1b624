"""Fetching models and SAE files from the Hugging Face Hub (into its usual local cache).

A SAE spec is `hf:<owner>/<repo>/<path in repo>`. A path ending in a file name (`.pth`, `.pt`,
`.npz`, `.safetensors`, `.json`) downloads that file; any other path (or none) is a SAELens
folder, whose `cfg.json` and `sae_weights.safetensors` are downloaded side by side.

Downloads show huggingface_hub's progress bars and resume file by file (what is in the cache is
not fetched again). With HF_HUB_OFFLINE=1 everything comes from the cache. Failures become
ValueErrors with one line for the user: a gated model says where to accept its licence, a
missing cache while offline says to run `ember-bot fetch` first.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path, PurePosixPath

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

PREFIX = "hf:"
FILE_SUFFIXES = (".pth", ".pt", ".npz", ".safetensors", ".json")
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
# Files read beside a SAE file when its repo has them: Gemma Scope 2's config.json.
COMPANIONS = {"params.safetensors": "config.json"}
FETCH_COMMAND = "ember-bot fetch"
# What serving a causal LM reads: config, weights (sharded or not), tokenizer, chat template.
# Not other weight formats (.bin, .pth, gguf, onnx) or the `original/` checkpoints some repos add.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*",
)
LICENCE_PAGE = "https://huggingface.co/{repo_id}"


def parse_spec(spec: str) -> tuple[str, str]:
    """`hf:owner/repo/some/path` -> ("owner/repo", "some/path"); the path may be empty."""
    parts = [part for part in spec.removeprefix(PREFIX).split("/") if part]
    if not spec.startswith(PREFIX) or len(parts) < 2:
        raise ValueError(
            f"Not a Hugging Face spec: {spec!r}. Write hf:<owner>/<repo>/<path in repo>."
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def download(spec: str, *, command: str = FETCH_COMMAND) -> Path:
    """The local path of the file or SAELens folder `spec` names, downloading what is missing.
    `command` is what to tell the user to run when offline with an empty cache."""
    repo_id, path = parse_spec(spec)
    try:
        if path.endswith(FILE_SUFFIXES):
            local = Path(hf_hub_download(repo_id, path))
            _download_companion(repo_id, PurePosixPath(path))
            return local
        folder = PurePosixPath(path)
        files = [hf_hub_download(repo_id, str(folder / name)) for name in SAELENS_FILES]
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ValueError(explain(error, repo_id, command=command)) from error
    return Path(files[0]).parent


def _download_companion(repo_id: str, path: PurePosixPath) -> None:
    if (name := COMPANIONS.get(path.name)) is None:
        return
    with suppress(EntryNotFoundError, HfHubHTTPError):  # optional: absent, or not cached
        hf_hub_download(repo_id, str(path.with_name(name)))


def download_repo(
    repo_id: str,
    patterns: tuple[str, ...] = MODEL_FILES,
    *,
    ignore: tuple[str, ...] = (),
    command: str = FETCH_COMMAND,
) -> Path:
    """The local snapshot of `repo_id`'s files matching `patterns` (a model's, by default),
    downloading what the cache lacks."""
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=list(patterns), ignore_patterns=list(ignore))
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise ValueError(explain(error, repo_id, command=command)) from error


def offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloads."""
    return bool(constants.HF_HUB_OFFLINE)


def explain(error: BaseException, repo_id: str, *, command: str = FETCH_COMMAND) -> str:
    """One line telling the user what went wrong fetching from `repo_id`, and what to do."""
    if isinstance(error, GatedRepoError):
        return (
            f"{repo_id} is gated: accept its licence at {LICENCE_PAGE.format(repo_id=repo_id)} "
            "and set HF_TOKEN (or run `hf auth login`)."
        )
    if isinstance(error, RepositoryNotFoundError):
        return f"{repo_id} was not found on {constants.ENDPOINT} (a private repo needs HF_TOKEN)."
    if isinstance(error, RevisionNotFoundError | RemoteEntryNotFoundError):
        return f"{repo_id}: {_first_line(error)} (not on {constants.ENDPOINT})."
    if isinstance(error, LocalEntryNotFoundError):
        if offline():
            return (
                f"{repo_id} is not in the local cache and HF_HUB_OFFLINE=1 is set: "
                f"run `{command}` first."
            )
        return (
            f"{repo_id} is not in the local cache and {constants.ENDPOINT} cannot be reached: "
            "check the network (or HF_ENDPOINT), then try again."
        )
    if isinstance(error, HfHubHTTPError):
        return f"{repo_id}: download failed: {_first_line(error)}"
    return f"{repo_id}: download failed: {type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
