"""HTTP transport options shared by the app's Azure SDK clients (Storage, Tables, Key Vault).

azure-core (1.41) opens its aiohttp session with `trust_env=True` unless configured otherwise.
aiohttp (3.14) then reads the netrc file and the proxy environment variables on every
request, each in a thread-pool round trip. Against Azurite on a 2-core VM that was about
0.5 ms of client CPU per queue send, a third of the client's cost (docs/benchmarks.md).
When no proxy variable is set and no netrc file exists, those reads cannot change a
request, so the clients skip them; otherwise the SDK default stays and proxies still work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_PROXY_SUFFIX = "_proxy"
# aiohttp's netrc lookup: the NETRC variable, else these names in the home directory.
_NETRC_NAMES = (".netrc", "_netrc")


def sdk_transport_options(
    environ: Mapping[str, str] | None = None, *, home: Path | None = None
) -> dict[str, Any]:
    """Return the keyword options that turn off the per-request environment reads.

    The result is empty, which keeps azure-core's default, when a `*_proxy` variable
    (any case) has a value or a netrc file exists. The environment is read once, when the
    clients are built, so a proxy variable set later in the worker's life is not seen.
    """
    env = os.environ if environ is None else environ
    if _has_proxy_variable(env) or _has_netrc_file(env, home):
        return {}
    return {"use_env_settings": False}


def _has_proxy_variable(env: Mapping[str, str]) -> bool:
    return any(name.lower().endswith(_PROXY_SUFFIX) and value for name, value in env.items())


def _has_netrc_file(env: Mapping[str, str], home: Path | None) -> bool:
    configured = env.get("NETRC")
    if configured is not None:
        return Path(configured).exists()
    try:
        directory = home if home is not None else Path.home()
    except RuntimeError:
        # No home directory can be resolved, so aiohttp finds no netrc file either.
        return False
    return any((directory / name).exists() for name in _NETRC_NAMES)
