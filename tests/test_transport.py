"""sdk_transport_options: when the SDK clients may skip aiohttp's per-request environment reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.transport import sdk_transport_options

SKIP_ENVIRONMENT = {"use_env_settings": False}


def test_transport_plain_environment(tmp_path: Path) -> None:
    assert sdk_transport_options({"PATH": "/usr/bin"}, home=tmp_path) == SKIP_ENVIRONMENT


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"])
def test_transport_proxy_variable(tmp_path: Path, name: str) -> None:
    assert sdk_transport_options({name: "http://proxy.example:3128"}, home=tmp_path) == {}


def test_transport_empty_proxy_variable(tmp_path: Path) -> None:
    assert sdk_transport_options({"HTTPS_PROXY": ""}, home=tmp_path) == SKIP_ENVIRONMENT


@pytest.mark.parametrize("name", [".netrc", "_netrc"])
def test_transport_netrc_in_home(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("machine example.org login a password b\n")
    assert sdk_transport_options({}, home=tmp_path) == {}


def test_transport_netrc_variable(tmp_path: Path) -> None:
    netrc = tmp_path / "credentials"
    netrc.write_text("machine example.org login a password b\n")
    home = tmp_path / "home"
    home.mkdir()
    assert sdk_transport_options({"NETRC": str(netrc)}, home=home) == {}


def test_transport_netrc_variable_missing_file(tmp_path: Path) -> None:
    # A NETRC variable replaces the home-directory lookup, so a home .netrc is not read.
    (tmp_path / ".netrc").write_text("machine example.org login a password b\n")
    options = sdk_transport_options({"NETRC": str(tmp_path / "absent")}, home=tmp_path)
    assert options == SKIP_ENVIRONMENT
