"""Attribution keeps no parameter gradients and records nothing below the hooked layer, and its
numbers are the gradient-times-activation estimate computed independently."""

from __future__ import annotations

import torch

from server.engine.runtime import Runtime
from server.model.presets import ModelBundle, build_tiny

MESSAGES = [
    {"role": "user", "content": "Tell me about the sea."},
    {"role": "assistant", "content": "Ahoy matey, the treasure sails on the sea at night."},
]


def reference_attribution(
    bundle: ModelBundle, prompt: list[int], start: int, end: int, top_k: int
) -> tuple[list[int], list[float]]:
    """Gradient of the target tokens' logits at the hooked residual stream, times each feature's
    decoder direction, times its activation, summed over positions; the top_k features."""
    captured: list[torch.Tensor] = []

    def hook(_module: object, _args: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        leaf = hidden.detach().requires_grad_()
        captured.append(leaf)
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    handle = bundle.model.model.layers[bundle.layer].register_forward_hook(hook)
    try:
        ids = torch.tensor([prompt])
        logits = bundle.model(input_ids=ids, use_cache=False).logits[0]
        targets = torch.arange(start, end + 1)
        score = logits[targets - 1, ids[0, targets]].sum()
        (gradient,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
    with torch.no_grad():
        features = bundle.sae.encode(captured[0][0])
        totals = (features * (gradient[0] @ bundle.sae.W_dec.T)).sum(dim=0)
        values, indices = torch.topk(totals, top_k)
    return indices.tolist(), values.tolist()


async def test_attribution_keeps_no_parameter_gradients_and_its_numbers() -> None:
    bundle = build_tiny()
    bundle.model.requires_grad_(True)  # as a model loaded without freezing would be
    runtime = Runtime(bundle)
    try:
        prompt = runtime.encode_chat(MESSAGES, "read")
        start, end = len(prompt) - 6, len(prompt) - 2
        below_hook_tracked: list[bool] = []
        below = bundle.model.model.layers[bundle.layer - 1].register_forward_hook(
            lambda _m, _a, output: below_hook_tracked.append(
                (output[0] if isinstance(output, tuple) else output).requires_grad
            )
        )
        try:
            found = await runtime.attribute(prompt, start, end, 8)
        finally:
            below.remove()
    finally:
        runtime.close()

    parameters = [*bundle.model.parameters(), *bundle.sae.parameters()]
    assert all(p.grad is None for p in parameters)
    assert not any(p.requires_grad for p in parameters)  # the runtime froze them
    assert below_hook_tracked == [False]  # autograd recorded nothing below the hooked layer

    indices, values = reference_attribution(bundle, prompt, start, end, 8)
    assert [item.index for item in found] == indices
    torch.testing.assert_close(torch.tensor([item.value for item in found]), torch.tensor(values))
    assert all(p.grad is None for p in parameters)


def test_the_tiny_preset_and_the_runtime_freeze_every_parameter(tiny_bundle) -> None:
    assert not any(p.requires_grad for p in tiny_bundle.model.parameters())
    assert not tiny_bundle.model.training
