"""Project-wide pytest setup: where the team's fixtures live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURE_TAGS = ["esgz", "esgz-c64k", "esgz-prefetch", "zstdchunked"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"team fixtures not found at {FIXTURES} (expected ../shared/fixtures beside the repo)")
    return FIXTURES


@pytest.fixture(scope="session")
def expected_paths(fixtures_dir: Path) -> dict[str, dict]:
    """features-expected.json's `paths`, keyed by normalised path."""
    data = json.loads((fixtures_dir / "features-expected.json").read_text())
    return {p["path"]: p for p in data["paths"]}


def fixture_facts(fixtures_dir: Path, tag: str) -> dict:
    return json.loads((fixtures_dir / f"features-{tag}.json").read_text())
