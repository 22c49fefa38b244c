"""Retry delays: exponential backoff with full jitter, and `Retry-After` parsing."""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# str.isdigit() also accepts digits such as "²" that float() cannot read.
_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")


def retry_delay_seconds(
    attempts_made: int,
    *,
    base_seconds: float,
    cap_seconds: float,
    retry_after_seconds: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """Choose how long a failed delivery waits before its next attempt, in whole seconds.

    Full jitter (a uniform draw between 0 and `base * 2**(attempts - 1)`, capped) spreads the
    retries of many events that failed together. A `Retry-After` from ClientTrack raises the
    delay to at least that value; `cap_seconds` bounds both. Storage Queues take visibility
    timeouts in whole seconds, so the result is rounded up.
    """
    exponent = max(attempts_made - 1, 0)
    # Past 2**60 the product only overflows; the cap applies long before.
    ceiling = min(cap_seconds, base_seconds * 2.0 ** min(exponent, 60))
    delay = (rng or random).uniform(0.0, ceiling)
    if retry_after_seconds is not None:
        delay = max(delay, retry_after_seconds)
    return math.ceil(min(delay, cap_seconds))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Read a `Retry-After` header: delay-seconds or an HTTP date. Return None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0)
