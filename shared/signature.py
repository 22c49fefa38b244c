"""Verification of Onfleet webhook signatures.

Onfleet sends `X-Onfleet-Signature`: the lowercase hex HMAC-SHA512 of the raw request body,
keyed with the organization's webhook secret after hex-decoding it to bytes. There is no
prefix and no timestamp, so the only defence against replays is the queue's dedupe by event
id downstream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from shared.errors import ConfigurationError, SignatureError

SIGNATURE_HEADER = "X-Onfleet-Signature"
# SHA-512 digests are 64 bytes, 128 hex digits.
SIGNATURE_HEX_LENGTH = 128

_SECRET_SEPARATORS = re.compile(r"[\s,]+")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def parse_secrets(stored_value: str, *, secret_name: str) -> list[bytes]:
    """Split a stored secret value into hex-decoded keys, one per secret in rotation.

    Several secrets may be separated by commas or whitespace. A part that is not an even
    number of hex digits raises `ConfigurationError` naming the secret, never its value.
    """
    keys: list[bytes] = []
    for position, part in enumerate(p for p in _SECRET_SEPARATORS.split(stored_value) if p):
        if len(part) % 2 or not _HEX.match(part):
            raise ConfigurationError(
                f"Secret {secret_name} holds an entry that is not hex (entry {position + 1}, "
                f"{len(part)} characters); store the Onfleet webhook secret exactly as Onfleet "
                "shows it."
            )
        keys.append(bytes.fromhex(part))
    if not keys:
        raise ConfigurationError(
            f"Secret {secret_name} is empty; store the Onfleet webhook secret."
        )
    return keys


def sign(body: bytes, key: bytes) -> str:
    """Return the signature Onfleet would send for `body` under the decoded `key`."""
    return hmac.new(key, body, hashlib.sha512).hexdigest()


def verify(body: bytes, signature_header: str | None, keys: Sequence[bytes]) -> None:
    """Check `signature_header` against every key; raise `SignatureError` if none matches.

    The header is compared in constant time against each key's digest, and all keys are
    tried even after a match so the time taken does not tell which key matched.
    """
    if signature_header is None or not signature_header.strip():
        raise SignatureError(f"Header {SIGNATURE_HEADER} is missing.")
    candidate = signature_header.strip().lower()
    if len(candidate) != SIGNATURE_HEX_LENGTH or not _HEX.match(candidate):
        raise SignatureError(
            f"Header {SIGNATURE_HEADER} is malformed: expected {SIGNATURE_HEX_LENGTH} hex "
            f"digits, got {len(candidate)} characters."
        )
    expected = candidate.encode("ascii")
    matched = False
    for key in keys:
        digest = hmac.new(key, body, hashlib.sha512).hexdigest().encode("ascii")
        matched |= hmac.compare_digest(digest, expected)
    if not matched:
        raise SignatureError(f"Header {SIGNATURE_HEADER} matches none of the customer's secrets.")
