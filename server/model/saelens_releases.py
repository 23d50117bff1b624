"""SAELens release/id names (`gemma-scope-2-270m-it-res/layer_12_width_16k_l0_medium`), resolved
through a pinned copy of the facts SAELens' catalogue holds about them.

`saelens_releases.json` (beside this module) is an extract of SAELens' `pretrained_saes.yaml`: for
each release the presets use, its model, Hugging Face repo and conversion function, and every SAE
id with its path in the repo, L0 and Neuronpedia id. We read that copy instead of depending on
`sae-lens`, which pulls in transformer-lens, datasets and more to answer what is a table lookup.
Refresh it from a newer SAELens (the release list is kept; pass `--release` to add one):

    python -m server.model.saelens_releases --refresh .../sae_lens/pretrained_saes.yaml \
        --version 6.54.12
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

PINNED = "saelens_releases.json"
SaeFormat = Literal["saelens", "goodfire", "gemma-scope-2"]
# SAELens' conversion_func -> the format of the files it reads (None: SAELens' own cfg.json).
FORMATS: dict[str | None, SaeFormat] = {
    None: "saelens",
    "sae_lens": "saelens",
    "goodfire": "goodfire",
    "gemma_3": "gemma-scope-2",
}
GEMMA_SCOPE_2_WEIGHTS = "params.safetensors"
EXAMPLE = "gemma-scope-2-270m-it-res/layer_12_width_16k_l0_medium"


@dataclass(frozen=True)
class SaeSource:
    """Where a SAELens release/id lives and what it reads."""

    release: str
    sae_id: str
    model: str  # the Hugging Face model the SAE was trained on
    repo_id: str
    path: str  # SAELens' path in the repo: a folder (SAELens, Gemma Scope 2) or a file
    format: SaeFormat
    layer: int  # the decoder layer whose output (SAELens' blocks.L.hook_resid_post) it reads
    neuronpedia: tuple[str, str] | None  # (model id, source id) of its Neuronpedia labels

    @property
    def name(self) -> str:
        return f"{self.release}/{self.sae_id}"

    @property
    def spec(self) -> str:
        """What `load_sae` (and `server.model.hub.download`) take: `hf:<repo>/<path>`."""
        path = self.path
        if self.format == "gemma-scope-2":
            path = f"{path}/{GEMMA_SCOPE_2_WEIGHTS}"
        return f"hf:{self.repo_id}/{path}"


@cache
def pinned() -> dict[str, Any]:
    """The pinned extract: {"sae_lens_version": ..., "releases": {name: {...}}}."""
    text = files("server.model").joinpath(PINNED).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def looks_like_release(text: str) -> bool:
    """Whether `--sae text` names a SAELens release/id rather than a local path or hf: spec."""
    if text.startswith("hf:") or Path(text).exists():
        return False
    return not text.startswith((".", "/", "~")) and "/" in text


def resolve(text: str) -> SaeSource:
    """The SAE `release/id` names. Unknown names raise ValueError with close matches."""
    releases: dict[str, Any] = pinned()["releases"]
    release_name, _, sae_id = text.partition("/")
    if release_name not in releases:
        raise ValueError(
            f"Unknown SAE {text!r}: no such file or folder, and {release_name!r} is not a SAELens "
            f"release this server knows; {_choices(release_name, releases)} (e.g. {EXAMPLE})"
        )
    release = releases[release_name]
    saes = {sae["id"]: sae for sae in release["saes"]}
    if sae_id not in saes:
        where = f"in SAELens release {release_name!r}"
        raise ValueError(f"Unknown SAE id {sae_id!r} {where}; {_choices(sae_id, saes)}")
    entry = saes[sae_id]
    conversion = release.get("conversion_func")
    if conversion not in FORMATS:
        raise ValueError(f"{text}: SAELens' {conversion!r} format is not supported.")
    return SaeSource(
        release=release_name,
        sae_id=sae_id,
        model=release["model"],
        repo_id=release["repo_id"],
        path=entry["path"],
        format=FORMATS[conversion],
        layer=_resid_post_layer(text, sae_id, entry["path"]),
        neuronpedia=_neuronpedia(entry.get("neuronpedia")),
    )


def _choices(name: str, every: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, every, n=4, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    shown = sorted(every)[:8]
    more = f", … ({len(every)} in all)" if len(every) > len(shown) else ""
    return "known: " + ", ".join(shown) + more + "."


def _resid_post_layer(text: str, sae_id: str, path: str) -> int:
    """`layer_12_…` (Gemma Scope 2, Goodfire ids) or `blocks.12.hook_resid_post` -> 12."""
    if re.search(r"attn|mlp|transcoder|clt|hook_z", path):
        raise ValueError(f"{text}: only residual-stream SAEs are supported, this reads {path!r}.")
    match = re.search(r"layer_(\d+)", sae_id) or re.search(r"blocks\.(\d+)\.hook_resid_post", path)
    if match is None:
        raise ValueError(f"{text}: cannot tell which layer this SAE reads; pass --layer.")
    return int(match.group(1))


def _neuronpedia(source: str | None) -> tuple[str, str] | None:
    """'gemma-3-1b-it/13-gemmascope-2-res-16k' -> ('gemma-3-1b-it', '13-gemmascope-2-res-16k')."""
    if not source:
        return None
    model_id, _, source_id = source.partition("/")
    return model_id, source_id


# ---- refreshing the pinned copy ----------------------------------------------------------------


def extract(catalogue: dict[str, Any], releases: list[str], version: str) -> dict[str, Any]:
    """The facts we pin about `releases` from SAELens' parsed `pretrained_saes.yaml`."""
    missing = [name for name in releases if name not in catalogue]
    if missing:
        raise ValueError(f"Not in the SAELens catalogue: {', '.join(missing)}.")
    return {
        "sae_lens_version": version,
        "releases": {
            name: {
                "model": catalogue[name]["model"],
                "repo_id": catalogue[name]["repo_id"],
                "conversion_func": catalogue[name].get("conversion_func"),
                "saes": [
                    {
                        "id": sae["id"],
                        "path": str(sae["path"]),
                        "l0": sae.get("l0"),
                        "neuronpedia": sae.get("neuronpedia"),
                    }
                    for sae in catalogue[name]["saes"]
                ],
            }
            for name in sorted(releases)
        },
    }


def dumps(data: dict[str, Any]) -> str:
    """JSON with one SAE per line, so a refresh reads as a short diff."""
    lines = ["{", f'"sae_lens_version": {json.dumps(data["sae_lens_version"])},', '"releases": {']
    releases = list(data["releases"].items())
    for index, (name, release) in enumerate(releases):
        header = {key: value for key, value in release.items() if key != "saes"}
        lines.append(f"{json.dumps(name)}: {json.dumps(header)[:-1]}, " + '"saes": [')
        lines.append(",\n".join(" " + json.dumps(sae) for sae in release["saes"]))
        lines.append("]}" + ("," if index < len(releases) - 1 else ""))
    return "\n".join([*lines, "}}", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Refresh the pinned SAELens catalogue extract.")
    parser.add_argument("--refresh", type=Path, required=True, help="SAELens' pretrained_saes.yaml")
    parser.add_argument("--version", required=True, help="the SAELens version it comes from")
    parser.add_argument("--release", action="append", default=[], help="add a release")
    args = parser.parse_args(argv)
    import yaml  # only needed here

    catalogue = yaml.safe_load(args.refresh.read_text(encoding="utf-8"))
    releases = sorted({*pinned()["releases"], *args.release})
    target = Path(__file__).with_name(PINNED)
    target.write_text(dumps(extract(catalogue, releases, args.version)), encoding="utf-8")
    print(f"Wrote {len(releases)} releases from SAELens {args.version} to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
