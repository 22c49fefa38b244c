"""Exceptions raised by the bridge.

Third-party errors (azure-core, azure-storage, httpx) are translated into these types at the
module that talks to the service, so callers catch one hierarchy:

    BridgeError
    ├── ConfigurationError        a setting or stored secret is missing or malformed
    ├── SignatureError            an Onfleet signature is missing, malformed or wrong
    ├── SecretStoreUnavailable    Key Vault throttled the read or could not be reached
    ├── StorageUnavailable        a queue or blob operation failed
    ├── EnvelopeError             a queue message is not a readable envelope
    │   └── PayloadMissing        a claim-checked body is not in Blob storage
    └── DeliveryError             the ClientTrack call did not succeed
        ├── TransientDeliveryError    worth retrying (408, 425, 429, 5xx, timeouts)
        └── PermanentDeliveryError    retrying cannot help (other 4xx)
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ConfigurationError(BridgeError):
    """A setting or a stored secret is missing or malformed."""


class SignatureError(BridgeError):
    """An Onfleet request signature is missing, malformed or matches no secret."""


class SecretStoreUnavailable(BridgeError):
    """The secret store throttled the read or could not be reached; retry later."""


class StorageUnavailable(BridgeError):
    """A Storage queue or blob operation failed; the caller must not report success."""


class EnvelopeError(BridgeError):
    """A queue message is not a readable envelope of a known schema version."""

    reason = "unreadable-envelope"


class PayloadMissing(EnvelopeError):
    """The blob named by an envelope's `bodyBlob` does not exist."""

    reason = "payload-missing"


class DeliveryError(BridgeError):
    """The ClientTrack integration queue call did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_seconds = retry_after_seconds


class TransientDeliveryError(DeliveryError):
    """A failure that a later attempt may not meet: 408, 425, 429, 5xx, timeouts."""


class PermanentDeliveryError(DeliveryError):
    """A failure that a retry cannot fix, such as a 400 or a refused credential."""
