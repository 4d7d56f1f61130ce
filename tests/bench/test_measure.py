"""The harness's statistics and offset choices: what the reported figures mean."""

from __future__ import annotations

from pathlib import Path

from bench.measure import PAGE, median, percentile, spread_offsets, uniform_offsets
from bench.report import WHERE_HEADING, WHERE_PLACEHOLDER, kept_section


def test_percentiles_are_observed_values():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_cold_offsets_touch_every_chunk_once():
    chunk = 4 << 20
    size = 10 * chunk + 12345
    offsets = spread_offsets(size, chunk, seed=7)
    assert sorted(o // chunk for o in offsets) == list(range(11))
    assert all(o % PAGE == 0 and o + PAGE <= size for o in offsets)
    assert offsets == spread_offsets(size, chunk, seed=7)  # the same every run


def test_uniform_offsets_are_aligned_and_inside():
    offsets = uniform_offsets(1 << 20, 500, seed=1)
    assert len(offsets) == 500 and all(o % PAGE == 0 and o + PAGE <= 1 << 20 for o in offsets)


def test_rewrite_keeps_the_hand_written_section(tmp_path: Path):
    path = tmp_path / "B.md"
    assert kept_section(path) == WHERE_PLACEHOLDER
    path.write_text(f"# t\n\n| table |\n\n{WHERE_HEADING}\n\nnotes\n\n- more\n\n## Later\n\nx\n")
    assert kept_section(path) == f"{WHERE_HEADING}\n\nnotes\n\n- more\n"
