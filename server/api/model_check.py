"""Requests naming another model than the served one are refused, as pydantic would refuse them."""

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from server.api.served import Served


async def check_requested_model(request: Request, served: Served) -> None:
    """A dependency answering 422, in pydantic's words, to a request naming another model.

    The model is read from the query string, or from the JSON body of a POST (an unreadable
    body is left to the route's own validation).
    """
    where, named = "query", request.query_params.get("model")
    if request.method == "POST":
        try:
            body = json.loads(await request.body())
        except ValueError:
            return
        where, named = "body", body.get("model") if isinstance(body, dict) else None
    if named is not None and named != served.model_id:
        expected = f"'{served.model_id}'"
        raise RequestValidationError(
            [
                {
                    "type": "literal_error",
                    "loc": (where, "model"),
                    "msg": f"Input should be {expected}",
                    "input": named,
                    "ctx": {"expected": expected},
                }
            ]
        )
