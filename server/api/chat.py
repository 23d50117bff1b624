"""Chat routes: completions (plain or streamed, steered by the request's controller) and
tokenization."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.api import schemas
from server.api.chat_reply import ChatReply
from server.api.served import Served
from server.engine.generation import DEFAULT_MAX_TOKENS, SamplingParams

router = APIRouter()


@router.post("/chat/completions")
async def chat_completions(body: schemas.ChatCompletionRequest, served: Served) -> Any:
    plan = served.plan(body.controller)
    prompt = served.prompt(body.messages, "generate")
    events = served.runtime.generate(prompt, _sampling(body), plan)
    reply = ChatReply(served.model_id, served.fingerprint)
    if body.stream:
        return StreamingResponse(
            reply.stream(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await reply.collect(events)


@router.post("/chat/tokenize")
async def tokenize(body: schemas.TokenizeRequest, served: Served) -> dict[str, Any]:
    prompt = served.prompt(body.messages, "read")
    return {"tokens": [{"value": token} for token in served.runtime.token_strings(prompt)]}


def _sampling(body: schemas.ChatCompletionRequest) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return SamplingParams(
        max_tokens=body.max_completion_tokens or DEFAULT_MAX_TOKENS,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=tuple(stop),
    )
