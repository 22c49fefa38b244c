"""HTTP trigger for `/onfleet/webhooks/{customerId}`: Onfleet's handshake and events."""

from __future__ import annotations

import azure.functions as func

from shared.runtime import get_runtime
from shared.settings import get_settings

# Validating here makes a bad setting fail when the worker loads the function, before any
# request is answered.
get_settings()


async def main(req: func.HttpRequest) -> func.HttpResponse:
    result = await get_runtime().ingest.handle(
        req.method,
        req.route_params.get("customerId", ""),
        check=req.params.get("check"),
        headers=req.headers,
        body=req.get_body(),
    )
    return func.HttpResponse(
        result.body,
        status_code=result.status,
        headers=result.headers,
        mimetype=result.content_type.split(";")[0],
        charset="utf-8",
    )
