"""Turning results into a table on stdout, a JSON document and BENCHMARKS.md.

BENCHMARKS.md is regenerated whole except its "Where the time goes" section, which holds the
profiling notes people write by hand: a rerun keeps it, word for word.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

from bench.images import BenchImage
from bench.machine import Machine
from bench.measure import median
from bench.results import ITEMS, Results, Row

WHERE_HEADING = "## Where the time goes"
WHERE_PLACEHOLDER = (f"{WHERE_HEADING}\n\n_Not written yet: profile the row with the largest ratio "
                     "(see bench/README.md, \"Profiling\") and say what dominates._\n")
RERUN = "scripts/bench --write BENCHMARKS.md"


def fmt_value(row: Row, seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if row.unit == "us":
        us = seconds * 1e6
        return f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.2f} ms"
    text = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    if row.nbytes and seconds > 0:
        text += f" ({row.nbytes / (1 << 20) / seconds:,.0f} MiB/s)"
    return text


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if math.isfinite(ratio) else "-"


def table_rows(results: Results) -> list[list[str]]:
    rows = []
    for item, item_rows in results.by_item().items():
        for row in item_rows:
            rows.append([str(item), row.title, fmt_value(row, row.lazy_median), row.baseline or "-",
                         fmt_value(row, row.base_median), fmt_ratio(row.ratio),
                         fmt_value(row, row.go_median), fmt_ratio(row.go_ratio)])
    return rows


COLUMNS = ["#", "measurement", "lazylayer", "baseline", "baseline value", "ratio", "Go", "÷ Go"]


def peer_line(results: Results) -> str:
    """What the Go column is, or why it is empty (never silently missing)."""
    p = results.peer
    if p.get("available"):
        grpc = (f"; item 10: containerd-stargz-grpc ({p['grpc_binary']})" if p.get("grpc_binary")
                else "; item 10: containerd-stargz-grpc not built (build.sh builds it)")
        return f"Go peer: {p['version']} ({p['binary']}), same run, same registry and images{grpc}"
    return f"Go peer: {p.get('reason') or 'not measured'}"


def go_lines(results: Results) -> list[str]:
    """One line per row with a Go figure: lazylayer ÷ Go, the ratio of the medians, then each
    run's own ratio (its two samples were taken back to back: the VM's speed drifts between
    runs, so the spread of these pairs says how far one ratio can be trusted)."""
    out = []
    for row in results.rows.values():
        if row.go:
            line = (f"item {row.item}, {row.title.strip()}: {fmt_value(row, row.lazy_median)} vs "
                    f"{fmt_value(row, row.go_median)} = **{fmt_ratio(row.go_ratio)}**")
            if len(row.lazy) == len(row.go) > 1:
                line += " (each run: " + ", ".join(fmt_ratio(ours / go) if go else "-"
                                                   for ours, go in zip(row.lazy, row.go)) + ")"
            out.append(line)
    return out


def print_table(results: Results, machine: Machine, image: BenchImage, runs: int) -> None:
    from lazylayer.daemon.cli.output import print_table as show

    show(f"lazylayer benchmarks: medians of {runs} run{'s' if runs > 1 else ''}; "
         "ratio = lazylayer / baseline, ÷ Go = lazylayer / Go stargz-store (time: lower is better)",
         COLUMNS, table_rows(results))
    print(peer_line(results))
    print(f"machine: {machine.summary()}")
    print(f"image: {describe_image(image)}")
    for line in extras_lines(results):
        print(line)


def describe_image(image: BenchImage) -> str:
    layers = ", ".join(f"{l.name} {l.uncompressed_size / (1 << 20):.0f} MiB ({l.entries} entries)"
                       for l in image.gzip_layers)
    gz = sum(l.size for l in image.gzip_layers) / (1 << 20)
    es = sum(l.size for l in image.esgz_layers) / (1 << 20)
    return (f"{image.total_size / (1 << 20):.0f} MiB in 3 layers ({layers}); "
            f"gzip {gz:.0f} MiB, eStargz {es:.0f} MiB, {image.chunk_size >> 20} MiB chunks")


def extras_lines(results: Results) -> list[str]:
    e = results.extras
    out = []
    if "mount_cold_s" in e:
        out.append(f"`lazylayer mount` alone: {median(e['mount_cold_s']):.2f} s on an empty cache, "
                   f"{median(e.get('mount_warm_s', [math.nan])):.2f} s on a warm one (medians)")
    if "fleet_origin_ratio" in e:
        hosts = ", ".join(f"{median(e[k]):.2f} s" for k in sorted(e) if k.startswith("fleet_big_file_host"))
        out.append(f"fleet behind a cold pull-through cache (item 12): the origin sent "
                   f"{median(e['fleet_origin_ratio']):.3f}x the {median(e['fleet_blob_mb']):.0f} MB blob read by 3 hosts "
                   f"({median(e['fleet_origin_ratio_all']):.3f}x all the image's blobs, which the cache filled too); "
                   f"first byte on host 1 {median(e['fleet_first_byte_s']):.2f} s "
                   f"(a fresh daemon without mirror: {median(e['fleet_first_byte_direct_s']):.2f} s); "
                   f"the {median(e['fleet_big_file_mb']):.0f} MB file read in {hosts} (hosts 1, 2, 3)")
    if "entries_local" in e:
        out.append(f"entries walked by find: {int(median(e['entries_lazylayer']))} through the mount, "
                   f"{int(median(e['entries_local']))} on local disk")
    return out


def to_json(results: Results, machine: Machine, image: BenchImage, settings: dict[str, Any]) -> dict[str, Any]:
    by_item = results.by_item()
    return {
        "machine": machine.to_dict(),
        "image": image.to_dict(),
        "settings": settings,
        "items": {str(i): {"title": ITEMS[i], "rows": [r.to_dict() for r in by_item[i]]} for i in ITEMS},
        "extras": results.extras,
        "peer": results.peer,
        "slowest": results.slowest().key if results.slowest() else None,
    }


def _markdown_table(results: Results) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for cells in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def kept_section(path: Path) -> str:
    """The hand-written "Where the time goes" section of an existing file (to the next `## `)."""
    try:
        text = path.read_text()
    except OSError:
        return WHERE_PLACEHOLDER
    match = re.search(rf"^{re.escape(WHERE_HEADING)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    return match.group(0).rstrip() + "\n" if match else WHERE_PLACEHOLDER


def write_markdown(path: Path, results: Results, machine: Machine, image: BenchImage,
                   settings: dict[str, Any], config_text: str) -> None:
    slowest = results.slowest()
    items = "\n".join(f"{i}. {title}" for i, title in ITEMS.items())
    files = ", ".join(f"`/{p}`" for p in image.first_files)
    text = f"""# lazylayer benchmarks

Generated by `{RERUN}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; bench/README.md
explains every measurement. Medians of {settings['runs']} run{'s' if settings['runs'] > 1 else ''}.
Ratio = lazylayer ÷ baseline: for every row (times and latencies) 1.00 means "as fast as the
baseline" and higher is slower. Wall-clock figures on a shared VM are noisy (±40 % between runs
was measured here): compare rows of one run.

**Machine:** {machine.summary()}.
**Image:** {describe_image(image)}.
**Daemon:** {settings['workers']} workers for items 1-5 and 7; item 6 uses {', '.join(map(str, settings['scale']))}
worker(s) on a machine with {machine.cores} cores.

What is measured:
{items}

{_markdown_table(results)}

- {peer_line(results)}
{chr(10).join('- ' + line for line in extras_lines(results))}
- largest ratio: {f"item {slowest.item}, {slowest.title} ({fmt_ratio(slowest.ratio)})" if slowest else "-"}

<details><summary>The {len(image.first_files)} start-up files of item 1 (what `bash -l -c "python3 -c 'import json,
email, http.client'"` opens on Debian 12)</summary>

{files}
</details>

<details><summary>Config the daemon ran with (everything else: lazylayer's defaults)</summary>

```toml
{config_text.rstrip()}
```
</details>

## lazylayer ÷ Go stargz-store

Items 8 and 9, the same run: lazylayer's layer store and upstream's Go stargz-store, one after
the other (alternating), each with a fresh cache, on the same registry and eStargz images
(bench/README.md, "The peer"). Below 1.00 lazylayer is faster.

{chr(10).join('- ' + line for line in go_lines(results)) or '- ' + peer_line(results)}

{kept_section(path)}"""
    path.write_text(text)
