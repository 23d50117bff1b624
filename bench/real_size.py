"""Benchmark: a model of real size behind the real server, with no download.

A Llama 3.1 8B-shaped model with random weights (built straight on the device, in bfloat16 on a
GPU) and a random 65,536-feature SAE on layer 19 are served by the real server
(server.api.app.create_app on a loopback port), then measured through HTTP as the bot uses it:

- load: seconds to build model, SAE and tokenizer; seconds to start serving (the runtime's
  calibration included); memory after that (GPU: torch.cuda.memory_allocated; CPU: process RSS)
  and at the peak of the whole run (max_memory_allocated; peak RSS);
- generation: aggregate tokens/s of 1 stream and of --streams concurrent streams (SSE, greedy,
  --max-tokens each), plain and steered (a nudge plus a guard that never fires, so the SAE is
  read on every token: the dearest steering);
- features: the latency of one compute-features call (what `/inspect` sends) and of one
  compute-logits call (a plain forward of the same conversation), median of --repeats.

The tokenizer needs no download either: the Llama-3 chat template of the tiny preset over a
word-level vocabulary padded to the model's 128,256 ids, so every generated id decodes to one
word (one streamed chunk per token).

    python -m bench.real_size                 # full size on cuda (an H200: about a minute)
    python -m bench.real_size --json          # one JSON object
    python -m bench.real_size --device cpu --layers 2 --hidden 256 --sae-width 4096   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from bench.common import format_table, machine_info, peak_rss_mb, rss_mb
from bench.server import PROMPTS, READ_TEXT, guard, measure_reading, nudge, stream_completion
from server.api.app import create_app
from server.cli import serve_in_background
from server.model.labels import LabelIndex
from server.model.presets import ModelBundle
from server.model.sae import SparseAutoencoder
from server.model.tiny.tokenizer import BOS, CHAT_TEMPLATE, EOS, HEADER_END, HEADER_START

API_PREFIX = "/api/inference/v1"
REQUEST_TIMEOUT = 600.0
# meta-llama/Llama-3.1-8B-Instruct's config.json.
LLAMA_3_1_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3",
    "use_cache": True,
    "vocab_size": 128256,
}
HEAD_DIM = 128
GENERATION = (  # (result name, --streams at once (else 1), steered)
    ("solo_plain", False, False),
    ("solo_steered", False, True),
    ("concurrent_plain", True, False),
    ("concurrent_steered", True, True),
)
SPECIAL_IDS = {BOS: 128000, EOS: 128009, HEADER_START: 128006, HEADER_END: 128007}  # Llama 3's
GOODFIRE_LAYER = 19
TEMPLATE_WORDS = "system user assistant tell me a story ."  # the chat template's and inspect's


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_config(args: argparse.Namespace) -> transformers.LlamaConfig:
    """The 8B config, narrowed to --hidden and cut to --layers (head size and the MLP's and K/V
    heads' proportions kept)."""
    fields = dict(LLAMA_3_1_8B)
    scale = args.hidden / fields["hidden_size"]
    heads = max(1, args.hidden // HEAD_DIM)
    fields.update(
        hidden_size=args.hidden,
        intermediate_size=int(fields["intermediate_size"] * scale),
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads * fields["num_key_value_heads"] // 32),
        num_hidden_layers=args.layers,
    )
    return transformers.LlamaConfig(**fields)


def build_tokenizer(vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Lower-cased words and punctuation of the benchmark's prompts, padded with `w<id>` words
    to `vocab_size` ids; Llama 3's special-token ids and the tiny preset's chat template."""
    texts = (READ_TEXT, *PROMPTS, TEMPLATE_WORDS)
    words = sorted({word for text in texts for word in _split(text)})
    vocabulary = {"<unk>": 0, **{word: index + 1 for index, word in enumerate(words)}}
    taken = set(SPECIAL_IDS.values())
    free = (index for index in range(len(vocabulary), vocab_size) if index not in taken)
    for index in free:
        vocabulary[f"w{index}"] = index
    vocabulary.update(SPECIAL_IDS)
    core = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_IDS])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [HEADER_START, HEADER_END]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _split(text: str) -> list[str]:
    return [piece for piece, _span in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())]


def build_sae(d_in: int, d_sae: int, device: str, dtype: torch.dtype) -> SparseAutoencoder:
    """Random encoder and decoder (unit-norm decoder rows), made on the device."""
    with torch.device(device):
        generator = torch.Generator(device=device).manual_seed(0)
        decoder = torch.randn(d_sae, d_in, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        encoder = decoder.T.contiguous()
        bias = torch.full((d_sae,), -0.5)
        sae = SparseAutoencoder(encoder, bias, decoder, torch.zeros(d_in))
    return sae.to(dtype=dtype)


def build_bundle(args: argparse.Namespace, dtype: torch.dtype) -> ModelBundle:
    config = model_config(args)
    log(f"building a random {config.num_hidden_layers}-layer Llama (hidden {args.hidden}) ...")
    torch.manual_seed(0)
    with torch.device(args.device):  # weights made on the device: no copy in host RAM
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    model.eval()
    log(f"building a random {args.sae_width:,}-feature SAE on layer {args.layer} ...")
    sae = build_sae(args.hidden, args.sae_width, args.device, dtype)
    labels = {index: f"feature {index} of the random SAE" for index in range(16)}
    return ModelBundle(
        model=model,
        tokenizer=build_tokenizer(config.vocab_size),
        sae=sae,
        layer=args.layer,
        labels=LabelIndex.from_mapping(labels, args.sae_width),
        model_id="bench/random-llama-3.1-8b-shape",
        sae_id=f"bench/random-sae-{args.sae_width}",
    )


class Memory:
    """GPU memory (allocated by torch) on CUDA, process RSS elsewhere; in GiB."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    @property
    def kind(self) -> str:
        return "cuda allocated" if self.cuda else "process RSS"

    def now(self) -> float:
        used = torch.cuda.memory_allocated() if self.cuda else rss_mb() * 2**20
        return round(used / 2**30, 2)

    def peak(self) -> float:
        used = torch.cuda.max_memory_allocated() if self.cuda else peak_rss_mb() * 2**20
        return round(used / 2**30, 2)


async def throughput(
    http: httpx.AsyncClient, model: str, streams: int, max_tokens: int, steered: bool
) -> dict[str, float]:
    """`streams` streamed completions at once; aggregate tokens/s over the wall time."""

    def controller(number: int) -> dict[str, Any] | None:
        if not steered:
            return None
        return {**nudge(number, 0.3), "scopes": guard(number)["scopes"]}

    started = time.perf_counter()
    runs = await asyncio.gather(
        *(
            stream_completion(
                http, model, PROMPTS[number % len(PROMPTS)], max_tokens, controller(number)
            )
            for number in range(streams)
        )
    )
    wall = time.perf_counter() - started
    tokens = sum(run.tokens for run in runs)
    return {
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_ms": round(1000 * max(run.ttft for run in runs), 1),
    }


async def measure(base_url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as http:
        # Every shape the measured runs will see, at full length: on a GPU the first pass
        # over a new batch size or cache length pays for allocations and kernel selection
        # (3x slower decoding in a first run on an H200).
        log(f"warming up: 1 and {args.streams} streams of {args.max_tokens} tokens ...")
        for _name, concurrent, steered in GENERATION:
            streams = args.streams if concurrent else 1
            await throughput(http, model, streams, args.max_tokens if not steered else 8, steered)
        await measure_reading(http, model, args.inspect_words, repeats=1)
        results: dict[str, Any] = {}
        for name, concurrent, steered in GENERATION:
            streams = args.streams if concurrent else 1
            log(f"generating: {streams} stream(s), {name} ({args.max_tokens} tokens each) ...")
            results[name] = await throughput(http, model, streams, args.max_tokens, steered)
        log(f"compute-features over {args.inspect_words} words ...")
        results["features"] = await measure_reading(http, model, args.inspect_words, args.repeats)
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    memory = Memory(args.device)
    started = time.perf_counter()
    bundle = build_bundle(args, dtype)
    _synchronize(args.device)
    load_s = time.perf_counter() - started
    log(f"built in {load_s:.1f} s; starting the server (calibration included) ...")
    started = time.perf_counter()
    server = serve_in_background(create_app(bundle))
    start_s = time.perf_counter() - started
    after_load = memory.now()
    log(f"serving at {server.base_url} after {start_s:.1f} s; {after_load} GiB ({memory.kind})")
    try:
        measured = asyncio.run(measure(server.base_url, bundle.model_id, args))
    finally:
        server.stop()
    parameters = sum(p.numel() for p in bundle.model.parameters())
    return {
        "model": bundle.model_id,
        "device": args.device,
        "dtype": args.dtype,
        "memory_kind": memory.kind,
        "machine": machine_info(["torch", "transformers"]) | _gpu(args.device),
        "settings": {name: getattr(args, name) for name in map(_option_name, SIZES)},
        "results": {
            "parameters_b": round(parameters / 1e9, 3),
            "load_s": round(load_s, 2),
            "server_start_s": round(start_s, 2),
            "memory_after_load_gib": after_load,
            "memory_peak_gib": memory.peak(),
            **measured,
        },
    }


def _option_name(size: tuple[str, int | None, str]) -> str:
    return size[0].removeprefix("--").replace("-", "_")


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _gpu(device: str) -> dict[str, object]:
    if torch.device(device).type != "cuda":
        return {}
    return {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count()}


def report(result: dict[str, Any]) -> str:
    results, settings = result["results"], result["settings"]
    generation = [
        [
            f"{settings['streams'] if concurrent else 1} stream(s), {name.split('_')[1]}",
            results[name]["tokens_per_s"],
            results[name]["tokens"],
            results[name]["seconds"],
            results[name]["ttft_ms"],
        ]
        for name, concurrent, _steered in GENERATION
    ]
    features = results["features"]
    return "\n\n".join(
        [
            f"{result['model']}: {results['parameters_b']}B parameters, {settings['layers']} "
            f"layers, hidden {settings['hidden']}, SAE {settings['sae_width']:,} features on "
            f"layer {settings['layer']}, {result['dtype']} on {result['device']}",
            format_table(
                ["load", "value"],
                [
                    ["build model + SAE + tokenizer, s", results["load_s"]],
                    ["start serving (calibration), s", results["server_start_s"]],
                    [
                        f"memory after load, GiB ({result['memory_kind']})",
                        results["memory_after_load_gib"],
                    ],
                    [f"memory peak, GiB ({result['memory_kind']})", results["memory_peak_gib"]],
                ],
            ),
            format_table(
                ["generation (aggregate)", "tok/s", "tokens", "wall s", "last TTFT ms"], generation
            ),
            format_table(
                [f"features ({features['tokens']} tokens)", "p50 ms", "tok/s"],
                [
                    [route, features[key]["p50_ms"], features[key]["tokens_per_s"]]
                    for key, route in (
                        ("compute_features", "compute-features"),
                        ("plain_forward", "compute-logits (plain forward)"),
                    )
                ],
            ),
        ]
    )


SIZES = (  # (option, default, what it sets)
    ("--layers", 32, "decoder layers; 8B has 32"),
    ("--hidden", 4096, "hidden size; 8B has 4096"),
    ("--sae-width", 65536, "SAE features"),
    ("--layer", None, "hooked layer; default 19, or the last"),
    ("--max-tokens", 128, "new tokens per stream"),
    ("--streams", 8, "concurrent streams"),
    ("--inspect-words", 256, "words in the conversation inspect reads"),
    ("--repeats", 5, "calls per features route"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.real_size", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu (default: cuda)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bf16 on GPU")
    for flag, default, meaning in SIZES:
        shown = meaning if default is None else f"{meaning} (%(default)s)"
        parser.add_argument(flag, type=int, default=default, help=shown)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: pass --device cpu (with --layers 2 --hidden 256 ...)")
    if args.hidden % HEAD_DIM:
        parser.error(f"--hidden must be a multiple of the head size, {HEAD_DIM}")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.layer = min(GOODFIRE_LAYER, args.layers - 1) if args.layer is None else args.layer
    if not 0 <= args.layer < args.layers:
        parser.error(f"--layer must lie in 0..{args.layers - 1}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
