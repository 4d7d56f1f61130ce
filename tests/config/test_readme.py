"""The README tells a newcomer the things that surprised one: background fetch is on by default
(next to "only the bytes that are read"), the CLI reads /etc/lazylayer/lazylayer.toml, and where
writable upper dirs live. Each promise is checked against the code's defaults."""

from __future__ import annotations

from pathlib import Path

from lazylayer.shared.config import DEFAULT_CONFIG_PATH, Config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def paragraph_with(text: str) -> str:
    return next(p for p in README.split("\n\n") if text in p)


def test_background_fetch_default_is_said_next_to_only_the_bytes_read():
    intro = paragraph_with("only the bytes that are read")
    assert Config().background.enabled
    assert "on by default" in intro and "`background.enabled = false`" in intro


def test_the_default_config_file_is_documented():
    assert f"`{DEFAULT_CONFIG_PATH}` when it exists" in paragraph_with("Precedence")
    assert "names the file it read" in paragraph_with("Precedence")


def test_where_writable_upper_dirs_live():
    writable = paragraph_with("**Writable mounts**")
    assert "`daemon.run_dir/overlay/`" in writable and Config().daemon.run_dir in writable
    assert "RAM" in writable
