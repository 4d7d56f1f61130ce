"""The benchmark harness end to end, small: `python -m bench.harness --quick` builds a tiny image,
runs all eleven items once through a real registry, daemon and FUSE mount (and the Go
stargz-store, when it is built: --quick never builds it), and must report a finite figure on
every side of every row, or say why the Go column is empty (so the harness never rots). About
60-100 s here, so it stays in the default run; no figure is compared with any time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import WHERE_HEADING

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark mounts FUSE and drops caches: needs root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.timeout(300),
]


def test_quick_benchmark_reports_every_item_with_finite_numbers(tmp_path: Path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# old\n\n{WHERE_HEADING}\n\nhand-written profile notes\n")
    done = subprocess.run([sys.executable, "-m", "bench.harness", "--quick", "--json", "--workdir",
                           str(tmp_path / "work"), "--write", str(markdown)],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)

    assert sorted(doc["items"], key=int) == [str(i) for i in range(1, 12)]
    peer = doc["peer"]
    assert peer["available"] or peer["reason"], "an empty Go column must say why"
    for item, body in doc["items"].items():
        assert body["rows"], f"item {item} has no rows"
        for row in body["rows"]:
            sides = ["lazylayer"] + (["baseline_value"] if row["baseline"] else []) + \
                (["go"] if int(item) in (8, 9) and peer["available"] or int(item) == 10 and peer["grpc_binary"]
                 else [])
            for side in sides:
                value = row[side]["median"]
                assert value is not None and math.isfinite(value) and value > 0, (item, row["key"], side)
            assert row["baseline"] or int(item) >= 8, row["key"]  # items 1-7 always have a local baseline
            if row["baseline"]:
                assert math.isfinite(row["ratio"]), row["key"]
            if "go" in sides:
                assert math.isfinite(row["go_ratio"]) and len(row["go"]["samples"]) == 1, row["key"]
    assert {r["key"] for r in doc["items"]["6"]["rows"]} == {"cold_seq_w1", "cold_seq_w2", "cold_seq_w4"}
    assert doc["machine"]["cores"] == os.cpu_count()
    assert doc["extras"]["entries_lazylayer"] == doc["extras"]["entries_local"]
    for figure in ("fleet_origin_ratio", "fleet_first_byte_s", "fleet_first_byte_direct_s"):  # item 12
        assert all(math.isfinite(v) and v > 0 for v in doc["extras"][figure]), figure

    text = markdown.read_text()
    assert "| # | measurement |" in text and doc["machine"]["kernel"] in text
    assert "hand-written profile notes" in text  # a rerun keeps the profiling notes
    assert "## lazylayer ÷ Go stargz-store" in text and "Go peer: " in text
    assert not list((tmp_path / "work" / "lazy").glob("cache-*")), "scratch caches left behind"
    assert not (tmp_path / "work" / "peer").exists(), "the peers' scratch dir left behind"
