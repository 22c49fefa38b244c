"""Queue trigger on ONFLEET_EVENTS_QUEUE: deliver one envelope to ClientTrack."""

from __future__ import annotations

import azure.functions as func

from shared.runtime import get_runtime
from shared.settings import get_settings

# Validating here makes a bad setting fail when the worker loads the function, before any
# message is taken from the queue.
get_settings()


async def main(msg: func.QueueMessage) -> None:
    await get_runtime().processor.process(
        msg.get_body(), message_id=msg.id or "-", dequeue_count=msg.dequeue_count or 1
    )
