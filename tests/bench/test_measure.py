"""The harness's statistics and offset choices: what the reported figures mean."""

from __future__ import annotations

import tempfile
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


def test_app_start_needs_the_loader_and_every_link_on_the_way(tmp_path: Path):
    """The chroot runs /usr/bin/python3.11: its ELF interpreter and each symlink to a traced
    file must be in the rootfs, not only the file a link ends at."""
    from bench.app import PYTHON, elf_interpreter, image_name, link_chain

    assert elf_interpreter(PYTHON).startswith("/")
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to("real")
    assert link_chain(str(tmp_path / "link")) == [str(tmp_path.resolve() / "link"), str(tmp_path.resolve() / "real")]
    site, app_dir = tmp_path / "site", tmp_path / "app"
    assert image_name(f"{site}/numpy/__init__.py", site, app_dir, "usr/site") == "usr/site/numpy/__init__.py"
    assert image_name(f"{app_dir}/main.py", site, app_dir, "usr/site") == "app/main.py"
    assert image_name("/etc/passwd", site, app_dir, "usr/site") == "etc/passwd"
    assert image_name("/proc/self/maps", site, app_dir, "usr/site") is None


def test_the_recording_keeps_site_packages_under_a_scratch_prefix():
    """The bench's pip target dir and app dir live under /var/tmp, a prefix the recording skips
    for scratch files: the app's own files must still be recorded, or the prefetch list of the
    landmarked image misses every site-packages file it reads (it did: 133 rootfs files only)."""
    from bench.app import record

    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        site, app_dir = Path(scratch, "site"), Path(scratch, "app")
        (site / "mod").mkdir(parents=True)
        (site / "mod" / "__init__.py").write_text("VALUE = 7\n")
        app_dir.mkdir()
        script = app_dir / "main.py"
        script.write_text("import mod\nprint(mod.VALUE)\n")
        trace = record(script, site)
    assert str(site / "mod" / "__init__.py") in trace.opened
    assert str(script) in trace.opened
    assert trace.output == "7\n"


def test_an_empty_go_column_says_why():
    """Never a silently missing column: the table names the reason the Go peer is absent."""
    from bench.report import go_lines, peer_line, table_rows
    from bench.results import Results

    results = Results(peer={"available": False, "reason": "not available: build.sh failed (exit 100)"})
    row = results.row(9, "store_seq_lazy", "cold sequential read", None)
    row.lazy.append(1.0)
    assert peer_line(results) == "Go peer: not available: build.sh failed (exit 100)"
    assert table_rows(results)[0][-2:] == ["-", "-"] and go_lines(results) == []
    row.go.append(4.0)
    assert row.go_ratio == 0.25 and go_lines(results)[0].endswith("= **0.25**")
    row.lazy += [2.0, 3.0]
    row.go += [2.5, 1.0]
    assert go_lines(results)[0].endswith("= **0.80** (each run: 0.25, 0.80, 3.00)")


def test_layer_store_path_is_base64_of_the_ref():
    from bench.peers import layer_diff

    path = layer_diff(Path("/mnt"), "127.0.0.1:5000/bench/image:app-esgz-full", "sha256:ab")
    assert path == Path("/mnt/MTI3LjAuMC4xOjUwMDAvYmVuY2gvaW1hZ2U6YXBwLWVzZ3otZnVsbA==/sha256:ab/diff")
