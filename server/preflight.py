"""What `ember-bot serve` checks before it loads anything, so nobody waits for a model to load
only to hear that the port is taken or a file is broken: the port is free, and the local SAE and
label files given on the command line exist and are whole. A truncated download is named as one
("… is damaged or incomplete (truncated .npz); download it again"), never mistaken for a file
that needs unsafe loading."""

from __future__ import annotations

import errno
import gzip
import json
import socket
import sys
import zipfile
import zlib
from pathlib import Path

from server.model import saelens_releases
from server.model.labels import read_label_file

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # PyTorch's legacy (pre-zip) format is a pickle
MAX_SAFETENSORS_HEADER = 100_000_000  # what the safetensors library accepts
SAE_HELP = "check --sae (a file or folder, hf:<owner>/<repo>/<path>, or a SAELens release/id)"
LABELS_HELP = (
    'check --labels (JSONL lines {"index": 12, "label": "..."}, a Neuronpedia export, or a folder '
    "of them)"
)


def preflight(host: str, port: int, sae: str | None, labels: str | None) -> list[str]:
    """Every problem found, one line each; [] when serving may go ahead."""
    problems = [port_problem(host, port), *sae_problems(sae), labels_problem(labels)]
    return [problem for problem in problems if problem]


def port_problem(host: str, port: int) -> str | None:
    """Whether uvicorn could bind `host:port` now (it binds the same way, SO_REUSEADDR on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if sys.platform != "win32":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} is already in use on {host}; pick another with --port"
            if error.errno == errno.EACCES:
                return (
                    f"may not listen on port {port} on {host} (permission denied); pick a port "
                    "above 1023 with --port"
                )
            reason = error.strerror or str(error)
            return f"cannot listen on {host} port {port} ({reason}); check --host and --port"
    return None


def sae_problems(sae: str | None) -> list[str]:
    """Problems with a local SAE file or folder; remote and release names are checked later."""
    if sae is None or sae.startswith("hf:") or saelens_releases.looks_like_release(sae):
        return []
    path = Path(sae).expanduser()
    if not path.exists():
        return [f"SAE not found: {path}; {SAE_HELP}."]
    if path.is_dir():
        files = [path / name for name in ("params.safetensors", "sae_weights.safetensors")]
        return [problem for file in files if file.is_file() and (problem := file_problem(file))]
    problem = file_problem(path)
    return [problem] if problem else []


def file_problem(path: Path) -> str | None:
    """A damaged or foreign weights file, by its suffix; None if it looks whole."""
    if path.suffix == ".npz":
        return _zip_problem(path, ".npz", "a NumPy .npz archive")
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth"):
        if _head(path, 1) == PICKLE_MAGIC:
            return None  # the legacy format: nothing to check before loading it
        return _zip_problem(path, path.suffix, "a PyTorch state dict")
    return None


def labels_problem(labels: str | None) -> str | None:
    """A missing, damaged or unreadable local labels file (a folder is read as it loads)."""
    if labels is None or labels.startswith(("http://", "https://")):
        return None
    path = Path(labels).expanduser()
    if not path.exists():
        return f"labels not found: {path}; {LABELS_HELP}."
    if path.is_dir():
        return None
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 20):
                    pass
        except (OSError, EOFError, zlib.error):
            return _damaged(path, "truncated .gz")
    try:
        read_label_file(path, sys.maxsize)  # every index fits: the SAE is not loaded yet
    except ValueError as error:
        return f"{str(error).rstrip('.')}; {LABELS_HELP}."
    except OSError as error:
        return f"cannot read labels {path}: {error.strerror or error}; {LABELS_HELP}."
    return None


def _zip_problem(path: Path, suffix: str, kind: str) -> str | None:
    head = _head(path, len(ZIP_MAGIC))
    if not head:
        return _damaged(path, f"empty {suffix}")
    if head != ZIP_MAGIC:
        return f"{path} is not {kind} (wrong format); {SAE_HELP}."
    try:
        with zipfile.ZipFile(path) as archive:  # reads the directory at the end of the file
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return _damaged(path, f"truncated {suffix}")
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            return _damaged(path, "truncated .safetensors")
        length = int.from_bytes(prefix, "little")
        if length > MAX_SAFETENSORS_HEADER:
            return f"{path} is not a .safetensors file (wrong format); {SAE_HELP}."
        if 8 + length > size:
            return _damaged(path, "truncated .safetensors")
        try:
            header = json.loads(stream.read(length))
            tensors = [entry for key, entry in header.items() if key != "__metadata__"]
            end = max((int(entry["data_offsets"][1]) for entry in tensors), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path} is not a .safetensors file (wrong format); {SAE_HELP}."
    if 8 + length + end != size:
        return _damaged(path, "truncated .safetensors")
    return None


def _head(path: Path, count: int) -> bytes:
    with path.open("rb") as stream:
        return stream.read(count)


def _damaged(path: Path, what: str) -> str:
    return f"{path} is damaged or incomplete ({what}); download it again"
