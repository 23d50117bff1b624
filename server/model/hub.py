"""Fetching SAE files from the Hugging Face Hub (into its usual local cache).

A spec is `hf:<owner>/<repo>/<path in repo>`. A path ending in a file name (`.pth`, `.pt`,
`.npz`, `.safetensors`, `.json`) downloads that file; any other path (or none) is a SAELens
folder, whose `cfg.json` and `sae_weights.safetensors` are downloaded side by side.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

PREFIX = "hf:"
FILE_SUFFIXES = (".pth", ".pt", ".npz", ".safetensors", ".json")
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")


def parse_spec(spec: str) -> tuple[str, str]:
    """`hf:owner/repo/some/path` -> ("owner/repo", "some/path"); the path may be empty."""
    parts = [part for part in spec.removeprefix(PREFIX).split("/") if part]
    if not spec.startswith(PREFIX) or len(parts) < 2:
        raise ValueError(
            f"Not a Hugging Face spec: {spec!r}. Write hf:<owner>/<repo>/<path in repo>."
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def download(spec: str) -> Path:
    """The local path of the file or SAELens folder `spec` names, downloading what is missing."""
    repo_id, path = parse_spec(spec)
    try:
        if path.endswith(FILE_SUFFIXES):
            return Path(hf_hub_download(repo_id, path))
        folder = PurePosixPath(path)
        files = [hf_hub_download(repo_id, str(folder / name)) for name in SAELENS_FILES]
    except LocalEntryNotFoundError as error:
        raise ValueError(
            f"{spec}: not in the local Hugging Face cache and the Hub cannot be reached (offline?)."
        ) from error
    except HfHubHTTPError as error:
        raise ValueError(f"{spec}: download failed: {error}") from error
    return Path(files[0]).parent
