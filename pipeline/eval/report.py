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
# scored only where dlib finds a face on both images compared (pipeline.eval.metrics.face_metrics):
# a frame without one is a failure, reported as the share of frames scored next to the mean
FACE_METRICS = ("csim", "aed", "apd", "akd")
FRAME_COLUMNS = ("split", "key", "source_clip", "source_frame", "target_clip", "target_frame", *NUMBERS,
                 "keypoints_from", "driver_face", "result_face", "source_face", "render_ms", "metric_ms")


def _scored(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def _mean(values: list[float | None]) -> float | None:
    vals = _scored(values)
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{split: {metric: mean over the frames scored, "pairs" (= frames), "clips", "scored" (face
    metric → frames scored), "scored_rate" (its share of the frames), face-detection rates,
    alignment sources}}."""
    out: dict[str, dict[str, Any]] = {}
    for split, metrics in SPLIT_METRICS.items():
        mine = [r for r in rows if r["split"] == split]
        if not mine:
            continue
        agg: dict[str, Any] = {m: _mean([r[m] for r in mine]) for m in metrics}
        agg["pairs"] = len(mine)
        agg["clips"] = len({(r["source_clip"], r["target_clip"]) for r in mine})
        agg["scored"] = {m: len(_scored([r[m] for r in mine])) for m in metrics if m in FACE_METRICS}
        agg["scored_rate"] = {m: n / len(mine) for m, n in agg["scored"].items()}
        agg["result_face_detected"] = float(np.mean([bool(r["result_face"]) for r in mine]))
        agg["driver_face_detected"] = float(np.mean([bool(r["driver_face"]) for r in mine]))
        analysed = [bool(r["source_face"]) for r in mine if r.get("source_face") is not None]
        if analysed:  # (self pairs with csim_reference=driver never look at the source)
            agg["source_face_detected"] = float(np.mean(analysed))
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


# results.csv: the Table 1 columns, then how many frames each split has and how many each face metric scored
COUNT_KEYS = tuple(f"{split}_{k}" for split, metrics in SPLIT_METRICS.items()
                   for k in ("frames", *(f"{m}_scored" for m in metrics if m in FACE_METRICS)))


def table1(ours: dict[str, dict[str, Any]], label: str, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the paper's Table 1 layout: ours first (with its frame counts; its ``note`` lists why
    it is not comparable), then the paper's rows."""
    mine: dict[str, Any] = {"method": label}
    for split, metrics in SPLIT_METRICS.items():
        agg = ours.get(split, {})
        for m in metrics:
            mine[f"{split}_{m}"] = agg.get(m)
        mine[f"{split}_frames"] = agg.get("pairs", 0)
        for m, n in agg.get("scored", {}).items():
            mine[f"{split}_{m}_scored"] = n
    mine["note"] = ("NOT comparable with the paper: " + "; ".join(warnings)) if warnings else "paper protocol"
    return [mine] + [{"method": name, **values, "note": "paper"} for name, values in paper.table1_rows()]


def scoring_warnings(ours: dict[str, dict[str, Any]]) -> list[str]:
    """One line per split whose face metrics could not score every frame (no face found)."""
    out = []
    for split, agg in ours.items():
        short = {m: n for m, n in agg.get("scored", {}).items() if n < agg["pairs"]}
        if short:
            counts = ", ".join(f"{m.upper()} {n}" for m, n in short.items())
            out.append(f"{split}: face metrics scored on fewer than all {agg['pairs']} frames ({counts}): in the "
                       "others dlib found no face in the result or its reference (failures, not in the means)")
    return out


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
    return csv_text(rows, ["method", *paper.TABLE_KEYS, *COUNT_KEYS, "note"])


def _cell(row: dict[str, Any], key: str) -> str:
    """A Table 1 cell; a face metric of ours also says how many frames it scored ("0.512 (10/12)",
    "not scored (0/12)")."""
    split, _, metric = key.partition("_")
    frames, scored = row.get(f"{split}_frames"), row.get(f"{key}_scored")
    if metric not in FACE_METRICS or frames is None or scored is None:
        return _fmt(row.get(key), key)
    if not scored:
        return f"not scored (0/{frames})"
    return f"{_fmt(row.get(key), key)} ({scored}/{frames})"


def table1_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| method | " + " | ".join(paper.column_titles()) + " |"
    sep = "|---" * (1 + len(paper.TABLE_KEYS)) + "|"
    lines = [head, sep]
    for i, r in enumerate(rows):
        name = f"**{r['method']}**" if i == 0 else r["method"]
        lines.append(f"| {name} | " + " | ".join(_cell(r, k) for k in paper.TABLE_KEYS) + " |")
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
            "(n/N) after a face metric of ours: frames scored / frames. CSIM, AED, APD and AKD are scored only where "
            "dlib's detector finds a face in the result and in its reference (source or driving frame); a frame "
            "without one is a failure, left out of the mean, not a similarity of whatever pixels are there.", "",
            f"Paper rows: {report['table1_source']}.", ""]
    out += ["## Metric networks and choices", ""]
    out += [f"- **{k}**: {v}" for k, v in report["metric_networks"].items()]
    out.append("")
    out += ["## Counts", ""]
    for split, agg in report["aggregates"].items():
        scored = ", ".join(f"{m.upper()} {n}/{agg['pairs']} ({n / agg['pairs']:.0%})"
                           for m, n in agg.get("scored", {}).items())
        faces = f"{agg['result_face_detected']:.0%} of results, {agg['driver_face_detected']:.0%} of drivers"
        if "source_face_detected" in agg:
            faces += f", {agg['source_face_detected']:.0%} of sources"
        out.append(f"- {split}: {agg['pairs']} frames (pairs) over {agg['clips']} clip pairs; frames scored: {scored}; "
                   f"dlib found the face in {faces}; alignment keypoints from {agg['alignment_keypoints']}")
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

    from ..images import encode_png, label_strip

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
        rows += [label_strip(tile.shape[1], [f"{label}   (source | driver | result)"]), tile]
    if not rows:
        rows = [np.zeros((16, 16, 3), np.uint8)]
    return encode_png(np.concatenate(rows, axis=0))
