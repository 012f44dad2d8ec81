"""Per-frame metric rows → aggregates, the paper's Table 1 layout with our row beside the paper's,
per-clip rows, the grid image, and the files: ``results.json``, ``results.csv`` (the table),
``results.md``, ``per_clip.csv``, ``per_frame.csv``, ``grid.png``."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

from . import paper_results as paper

NUMBERS = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")
SPLIT_METRICS = {"self": tuple(k for k, _, _ in paper.SELF_COLUMNS), "cross": tuple(k for k, _, _ in paper.CROSS_COLUMNS)}
FRAME_COLUMNS = ("split", "key", "source_clip", "source_frame", "target_clip", "target_frame", *NUMBERS,
                 "keypoints_from", "driver_face", "result_face", "source_face", "render_ms", "metric_ms")


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{split: {metric: mean over frames, "pairs", "clips", face-detection rates, alignment sources}}."""
    out: dict[str, dict[str, Any]] = {}
    for split, metrics in SPLIT_METRICS.items():
        mine = [r for r in rows if r["split"] == split]
        if not mine:
            continue
        agg: dict[str, Any] = {m: _mean([r[m] for r in mine]) for m in metrics}
        agg["pairs"] = len(mine)
        agg["clips"] = len({(r["source_clip"], r["target_clip"]) for r in mine})
        agg["result_face_detected"] = float(np.mean([bool(r["result_face"]) for r in mine]))
        agg["driver_face_detected"] = float(np.mean([bool(r["driver_face"]) for r in mine]))
        sources = defaultdict(int)
        for r in mine:
            sources[str(r["keypoints_from"])] += 1
        agg["alignment_keypoints"] = dict(sorted(sources.items()))
        out[split] = agg
    return out


def per_clip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, source clip, driving clip): the means of its frames."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["split"], r["source_clip"], r["target_clip"])].append(r)
    out = []
    for (split, src, tgt), mine in sorted(groups.items()):
        row: dict[str, Any] = {"split": split, "source_clip": src, "target_clip": tgt, "pairs": len(mine)}
        for m in NUMBERS:
            row[m] = _mean([r[m] for r in mine]) if m in SPLIT_METRICS[split] else None
        row["result_face_detected"] = float(np.mean([bool(r["result_face"]) for r in mine]))
        out.append(row)
    return out


def table1(ours: dict[str, dict[str, Any]], label: str, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the paper's Table 1 layout: ours first (its ``note`` lists why it is not comparable),
    then the paper's rows."""
    mine: dict[str, Any] = {"method": label}
    for split, metrics in SPLIT_METRICS.items():
        for m in metrics:
            mine[f"{split}_{m}"] = ours.get(split, {}).get(m)
    mine["note"] = ("NOT comparable with the paper: " + "; ".join(warnings)) if warnings else "paper protocol"
    return [mine] + [{"method": name, **values, "note": "paper (spec §9)"} for name, values in paper.table1_rows()]


def _fmt(value: Any, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if key.endswith(("psnr", "akd")) else f"{value:.3f}"
    return str(value)


def csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def table1_csv(rows: list[dict[str, Any]]) -> str:
    return csv_text(rows, ["method", *paper.TABLE_KEYS, "note"])


def table1_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| method | " + " | ".join(paper.column_titles()) + " |"
    sep = "|---" * (1 + len(paper.TABLE_KEYS)) + "|"
    lines = [head, sep]
    for i, r in enumerate(rows):
        name = f"**{r['method']}**" if i == 0 else r["method"]
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k), k) for k in paper.TABLE_KEYS) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """results.md: warnings first, then Table 1 with the paper's rows, the metric networks and
    protocol choices, counts, timing and the per-clip table."""
    out = [f"# {report['title']}", ""]
    if report["warnings"]:
        out += ["**Read this first — these numbers are NOT comparable with the paper because:**", ""]
        out += [f"- **{w}**" for w in report["warnings"]]
        out.append("")
    ck = report["checkpoint"]
    out += [f"Checkpoint: `{ck['path']}` ({ck['kind']}"
            + (f", step {ck['step']:,}" if ck.get("step") is not None else "") + f"); FLAME: {ck['flame']}.", ""]
    out += ["## Table 1 layout (VFHQ in the paper; here: the given test shards)", "",
            table1_markdown(report["table1"]), "",
            f"Paper rows: {report['table1_source']}.", ""]
    out += ["## Metric networks and choices", ""]
    out += [f"- **{k}**: {v}" for k, v in report["metric_networks"].items()]
    out.append("")
    out += ["## Counts", ""]
    for split, agg in report["aggregates"].items():
        out.append(f"- {split}: {agg['pairs']} pairs over {agg['clips']} clip pairs; dlib found the face in "
                   f"{agg['result_face_detected']:.0%} of results and {agg['driver_face_detected']:.0%} of drivers; "
                   f"alignment keypoints from {agg['alignment_keypoints']}")
    t = report.get("timing", {})
    if t:
        out += ["", f"Time: {t.get('seconds', 0):.1f} s in all, {t.get('pairs_per_s', 0):.2f} pairs/s; render "
                f"{t.get('render_ms_per_pair', 0):.1f} ms/pair, metrics {t.get('metric_ms_per_pair', 0):.0f} ms/pair "
                f"(actor time; device: {report.get('device', '?')})."]
    clips = report.get("per_clip", [])
    if clips:
        cols = ("split", "source_clip", "target_clip", "pairs", *NUMBERS)
        out += ["", "## Per clip", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        out += ["| " + " | ".join(_fmt(c.get(k), k) for k in cols) + " |" for c in clips[:200]]
        if len(clips) > 200:
            out.append(f"\n… {len(clips) - 200} more rows in per_clip.csv")
    return "\n".join(out) + "\n"


def grid_png(panels: list[tuple[str, bytes]], header: str = "") -> bytes:
    """Stack (label, PNG of source | driver | result) panels vertically, each under a label strip;
    ``header`` (e.g. "NOT comparable: random weights …") in a red strip on top."""
    from PIL import Image, ImageDraw

    from ..data import encode_png

    rows = []
    width = 3 * 256
    if panels:
        with Image.open(io.BytesIO(panels[0][1])) as img:
            width = img.width
    if header:
        import textwrap

        header = header.replace("—", "-").replace("×", "x").encode("latin-1", "replace").decode("latin-1")
        lines = textwrap.wrap(header, width=max(20, width // 6))[:8]  # PIL's default bitmap font: ~6 px a glyph
        strip = Image.new("RGB", (width, 4 + 12 * len(lines)), (255, 225, 225))
        for k, line in enumerate(lines):
            ImageDraw.Draw(strip).text((4, 2 + 12 * k), line, fill=(160, 0, 0))
        rows.append(np.asarray(strip))
    for label, data in panels:
        with Image.open(io.BytesIO(data)) as img:
            tile = np.asarray(img.convert("RGB"))
        strip = Image.new("RGB", (tile.shape[1], 16), (255, 255, 255))
        ImageDraw.Draw(strip).text((4, 2), f"{label}   (source | driver | result)", fill=(0, 0, 0))
        rows += [np.asarray(strip), tile]
    if not rows:
        rows = [np.zeros((16, 16, 3), np.uint8)]
    return encode_png(np.concatenate(rows, axis=0))
