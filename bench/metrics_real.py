"""Do the evaluation metrics order real faces as they should? (No speed is measured here.)

    python -m bench.metrics_real --faces /path/to/real_faces --out bench/results/metrics_real.json

``--faces`` is a folder with ``driving/<clip>.mp4`` talking-head clips of real people (by default
LivePortrait's sample clips, ``assets/examples/driving/`` of github.com/KwaiVGI/LivePortrait; one
person per clip). Nothing is downloaded; the JSON names the clips by ``--origin`` and file name.
Each frame is cut to a square around dlib's face box (3× its side) and resized to 512², then goes
through the evaluation's own ``FaceMetrics`` (``pipeline.eval.stages.build_face_metrics``) as
(source, driver, result) triples. Checks, each recorded with its numbers and a pass flag:

- **CSIM**: result = a frame 2 s later of the same clip > result = another person's frame, for
  every clip (and on average); a blob, the face blurred beyond recognition (Gaussian σ = 0.1 × the
  face box side) and noise are *not scored*. A blur series (σ = 0.02 … 0.2 × the face box) records
  where scoring stops: a mildly blurred face is still a face, and is scored.
- **AKD**: grows with a known shift of the result (0, 2, 4, 8, 16 px) and ≈ shift × the
  alignment zoom.
- **APD**: grows with a known in-plane rotation of the result about the face (0, 4, 8, 16°).
- **AED**: grows with a known jaw opening — the chin, jaw line and lower lip landmarks moved down
  by 0, 6, 12, 24 px with a piecewise-affine warp (scikit-image) — while APD stays small.
- **PSNR / SSIM / LPIPS**: a slightly degraded result (JPEG q90, blur σ 0.7, noise σ 0.01) ranks
  above a heavily degraded one (JPEG q10, blur σ 4, noise σ 0.15) for every clip and kind.

The metric networks are the evaluation's defaults (dlib's descriptor for CSIM, our FLAME tracker
on the generated stand-in head for AED/APD, LPIPS with a random AlexNet) unless ``--alexnet`` /
``--arcface`` give files; the JSON says which ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._report import command_line, write_report

# one person per clip (d18 is left out: possibly the same man as d19)
DEFAULT_CLIPS = ("d0", "d3", "d6", "d9", "d10", "d11", "d12", "d13", "d14", "d19", "d20")
DEFAULT_ORIGIN = "github.com/KwaiVGI/LivePortrait@1986663:assets/examples/driving"
SIZE = 512
LATER_S = 2.0  # "another frame of the same person": this many seconds into the clip
SHIFTS_PX = (0, 2, 4, 8, 16)
ROLLS_DEG = (0, 4, 8, 16)
JAW_DROPS_PX = (0, 6, 12, 24)
HEAVY_BLUR = 0.1  # σ of "blurred beyond recognition", × dlib's face box side
BLUR_SERIES = (0.02, 0.05, 0.1, 0.2)
# iBUG-68 points that a jaw opening moves: jaw line below the ears (4–12), lower lip (55–59, 65–67)
JAW_POINTS = tuple(range(4, 13)) + (55, 56, 57, 58, 59, 65, 66, 67)


# ----------------------------------------------------------------------------- images


def read_frames(path: Path, seconds: Sequence[float]) -> list[np.ndarray]:
    """RGB uint8 frames at these times (the nearest decoded frame; the last one if the clip is shorter)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        wanted = [int(round(s * rate)) for s in seconds]
        out: dict[int, np.ndarray] = {}
        last = None
        for k, frame in enumerate(container.decode(video=0)):
            last = frame.to_ndarray(format="rgb24")
            if k in wanted:
                out[k] = last
            if k >= max(wanted):
                break
    if last is None:
        raise ValueError(f"{path.name}: no video frames")
    return [out.get(k, last) for k in wanted]


def face_square(frame: np.ndarray, analyzer) -> np.ndarray:
    """A SIZE² crop centred on dlib's face box, side 3× the box (inside the frame)."""
    from PIL import Image

    box = analyzer.detect(frame)
    h, w = frame.shape[:2]
    if box is None:
        cx, cy, side = w / 2, h / 2, min(h, w)
    else:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = min(3.0 * max(box[2] - box[0], box[3] - box[1]), h, w)
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    crop = frame[y0:y0 + int(side), x0:x0 + int(side)]
    return np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def shifted(image: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(image)
    out[:, k:] = image[:, :image.shape[1] - k]
    return out


def rolled(image: np.ndarray, degrees: float, centre: tuple[float, float]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).rotate(degrees, Image.Resampling.BICUBIC, center=centre))


def jaw_dropped(image: np.ndarray, landmarks: np.ndarray, drop_px: float) -> np.ndarray:
    """Piecewise-affine warp moving the JAW_POINTS down by ``drop_px`` (the lower lip and chin
    follow; the upper face, the image border and a ring around the face stay)."""
    from skimage.transform import PiecewiseAffineTransform, warp

    if drop_px == 0:
        return image
    src = np.asarray(landmarks, np.float64)[:68].copy()
    dst = src.copy()
    dst[list(JAW_POINTS), 1] += drop_px
    centre = src.mean(0)
    ring = centre + 1.6 * (src[:17] - centre)  # fixed points outside the face
    edge = np.linspace(0, SIZE - 1, 9)
    border = np.concatenate([np.stack([edge, np.zeros(9)], 1), np.stack([edge, np.full(9, SIZE - 1.0)], 1),
                             np.stack([np.zeros(9), edge], 1), np.stack([np.full(9, SIZE - 1.0), edge], 1)])
    fixed = np.concatenate([ring, border])
    # output → input coordinates
    tform = PiecewiseAffineTransform.from_estimate(np.concatenate([dst, fixed]), np.concatenate([src, fixed]))
    return (warp(image, tform, output_shape=image.shape[:2]) * 255).round().astype(np.uint8)


def degraded(image: np.ndarray, kind: str, strength: str, seed: int = 0) -> np.ndarray:
    import io

    from PIL import Image, ImageFilter

    level = {"jpeg": (90, 10), "blur": (0.7, 4.0), "noise": (0.01, 0.15)}[kind][strength == "heavy"]
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(level))
        return np.asarray(Image.open(buf).convert("RGB"))
    if kind == "blur":
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(level)))
    noise = np.random.default_rng(seed).normal(0, level * 255, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def not_faces(image: np.ndarray, face_side: float) -> dict[str, np.ndarray]:
    """A head-sized blob in the face's mean colour, the face blurred beyond recognition
    (σ = HEAVY_BLUR × the face box side), noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    blob = np.exp(-((xx - SIZE / 2) ** 2 / (2 * (SIZE / 6) ** 2) + (yy - SIZE / 2) ** 2 / (2 * (SIZE / 4.5) ** 2)))
    colour = image[SIZE // 3:2 * SIZE // 3, SIZE // 3:2 * SIZE // 3].reshape(-1, 3).mean(0)
    return {"blob": (blob[..., None] * colour).astype(np.uint8),
            "blurred": blurred(image, HEAVY_BLUR * face_side),
            "noise": np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)}


# ----------------------------------------------------------------------------- checks


def increasing(values: Sequence[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def _r(x: Any, digits: int = 4) -> Any:
    if isinstance(x, float):
        return None if np.isnan(x) else round(x, digits)
    return x


def csim_check(fm, frames: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    from pipeline.eval.metrics.identity import cosine_similarity

    first = {c: fm.source(to_tensor(f0), key=f"{c}/0") for c, (f0, _) in frames.items()}
    later = {c: fm.source(to_tensor(f1), key=f"{c}/1") for c, (_, f1) in frames.items()}
    missing = [c for c in frames if first[c].embedding is None or later[c].embedding is None]
    clips = [c for c in frames if c not in missing]
    rows = []
    for c in clips:
        same = cosine_similarity(first[c].embedding, later[c].embedding)
        others = [cosine_similarity(later[c].embedding, first[o].embedding) for o in clips if o != c]
        box = fm.analyzer.detect(frames[c][1])
        side = float(max(box[2] - box[0], box[3] - box[1])) if box is not None else SIZE / 3

        def score(image: np.ndarray, c: str = c) -> dict[str, Any]:
            m = fm.evaluate(to_tensor(frames[c][0]), to_tensor(frames[c][1]), to_tensor(image), cross=False,
                            source_key=f"{c}/0", driver_key=f"{c}/1")
            return {"csim": _r(m["csim"]), "akd": _r(m["akd"]), "result_face": bool(m["result_face"])}

        unscored = {name: score(image) for name, image in not_faces(frames[c][1], side).items()}
        series = {f"{k:g}": score(blurred(frames[c][1], k * side))["csim"] for k in BLUR_SERIES}
        rows.append({"clip": c, "face_box_px": round(side, 1), "same_person_later_frame": _r(same),
                     "other_people_max": _r(max(others)), "other_people_mean": _r(float(np.mean(others))),
                     "not_faces": unscored, "csim_of_blurred_by_sigma_over_face_box": series})
    same = [r["same_person_later_frame"] for r in rows]
    other = [r["other_people_mean"] for r in rows]
    all_unscored = all(v["csim"] is None and not v["result_face"] for r in rows for v in r["not_faces"].values())
    return {
        "what": f"cosine similarity of frame 0 vs a frame {LATER_S:g} s later of the same clip, vs frame 0 of every other "
                f"clip; blob / blurred (sigma = {HEAVY_BLUR:g} x the face box) / noise results must be not scored (None); "
                "the blur series shows where a blurred face stops being scored (None)",
        "clips_without_a_face": missing,
        "mean_same_person": _r(float(np.mean(same))), "mean_other_people": _r(float(np.mean(other))),
        "clips_where_same_beats_every_other": sum(r["same_person_later_frame"] > r["other_people_max"] for r in rows),
        "clips": len(rows),
        "pass": bool(rows) and all(r["same_person_later_frame"] > r["other_people_max"] for r in rows) and all_unscored,
        "per_clip": rows,
    }


def sweep_check(fm, frames: dict[str, np.ndarray], levels: Sequence[float], transform: Callable[[str, np.ndarray, float], np.ndarray],
                metrics: Sequence[str]) -> dict[str, Any]:
    """evaluate(driver = the frame, result = transform(frame, level)) for each level → per-clip
    metric series and their means."""
    rows = []
    for c, frame in frames.items():
        series: dict[str, list] = {m: [] for m in metrics}
        for level in levels:
            m = fm.evaluate(to_tensor(frame), to_tensor(frame), to_tensor(transform(c, frame, level)), cross=False,
                            source_key=f"{c}/1", driver_key=f"{c}/1")
            for k in metrics:
                series[k].append(_r(float(m[k])))
        rows.append({"clip": c, **series})
    means = {k: [_r(float(np.mean([r[k][i] for r in rows if r[k][i] is not None]))) if any(r[k][i] is not None for r in rows)
                 else None for i in range(len(levels))] for k in metrics}
    return {"levels": list(levels), "mean": means, "per_clip": rows}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", required=True, help="folder with driving/<clip>.mp4 clips of real people")
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS), help="clip names (one person each)")
    parser.add_argument("--sweep-clips", type=int, default=6, help="clips for the shift/rotation/jaw/degradation sweeps")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN, help="where the clips come from (recorded in the JSON)")
    parser.add_argument("--alexnet", default=None, help="torchvision alexnet-owt-7be5be79.pth for LPIPS (else random)")
    parser.add_argument("--arcface", default=None, help="an insightface ArcFace .onnx for CSIM (else dlib's descriptor)")
    parser.add_argument("--out", default="bench/results/metrics_real.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    from pipeline.config import load_config
    from pipeline.eval.stages import build_face_metrics, metric_network_names

    overrides = [f"eval.alexnet_weights={args.alexnet}"] if args.alexnet else []
    overrides += [f"eval.arcface_onnx={args.arcface}"] if args.arcface else []
    cfg = load_config("paper", overrides)
    fm = build_face_metrics(cfg)
    root = Path(args.faces).expanduser()
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "command": command_line("bench.metrics_real", sys.argv[1:] if argv is None else argv, {"--faces": "FACES"}),
        "faces": "FACES: a folder holding the clips below (not recorded: a machine path)",
        "data": {"origin": args.origin, "files": [f"{c}.mp4" for c in clips],
                 "frames": f"0 s and {LATER_S:g} s of each clip, cut to 3x dlib's face box, resized to {SIZE}^2"},
        "metric_networks": metric_network_names(cfg),
        "stand_ins": [s for s, on in (("LPIPS backbone: RANDOM AlexNet", not args.alexnet),
                                      ("CSIM: dlib face descriptor, not ArcFace", not args.arcface),
                                      ("AED/APD: FLAME tracker on the generated stand-in FLAME head", True)) if on],
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
    }
    frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in clips:
        path = root / "driving" / f"{c}.mp4"
        if not path.is_file():
            sys.exit(f"{path}: no such clip")
        f0, f1 = read_frames(path, (0.0, LATER_S))
        frames[c] = (face_square(f0, fm.analyzer), face_square(f1, fm.analyzer))

    report["csim"] = csim_check(fm, frames)
    write_report(report, args.out, echo=False)
    print(f"CSIM: same {report['csim']['mean_same_person']} > other {report['csim']['mean_other_people']}", flush=True)

    sweep = {c: frames[c][1] for c in list(frames)[:args.sweep_clips]}
    akd = sweep_check(fm, sweep, SHIFTS_PX, lambda c, f, k: shifted(f, int(k)), ("akd",))
    zoom = {c: SIZE / fm.driver(to_tensor(f), key=f"{c}/1").box[2] for c, f in sweep.items()}
    ratios = [r["akd"][i] / (k * zoom[r["clip"]]) for r in akd["per_clip"] for i, k in enumerate(SHIFTS_PX) if k]
    akd.update(what="AKD (px at 512^2) of the frame shifted right by each level (px of the 512^2 frame)",
               akd_over_expected_median=_r(float(np.median(ratios))),
               **{"pass": all(increasing(r["akd"]) for r in akd["per_clip"]) and akd["mean"]["akd"][0] == 0.0})
    report["akd"] = akd
    write_report(report, args.out, echo=False)
    print(f"AKD vs shift: {akd['mean']['akd']}", flush=True)

    def record(name: str, check: dict[str, Any], label: str) -> None:
        """A sweep passes when its mean grows with the level and so does every clip's but one."""
        per_clip = sum(increasing(r[name]) for r in check["per_clip"])
        check["pass"] = increasing(check["mean"][name]) and per_clip >= len(sweep) - 1
        report[name] = check
        write_report(report, args.out, echo=False)
        print(f"{label}: {check['mean'][name]}", flush=True)

    def roll(c: str, f: np.ndarray, deg: float) -> np.ndarray:
        box = fm.analyzer.detect(f)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) if box is not None else (SIZE / 2, SIZE / 2)
        return rolled(f, deg, centre)

    apd = sweep_check(fm, sweep, ROLLS_DEG, roll, ("apd", "aed"))
    apd["what"] = ("APD (mean |d yaw, pitch, roll|, radians) of the frame rotated in-plane by each level (degrees); "
                   "a pure roll of t degrees is t*pi/180/3 in this mean")
    record("apd", apd, "APD vs roll")

    def jaw(c: str, f: np.ndarray, px: float) -> np.ndarray:
        view = fm.driver(to_tensor(f), key=f"{c}/1")
        # landmarks of the aligned crop → frame pixels (the crop is box → SIZE²)
        x0, y0, side = view.box
        points = view.view.landmarks * (side / SIZE) + [x0, y0]
        return jaw_dropped(f, points, px)

    aed = sweep_check(fm, sweep, JAW_DROPS_PX, jaw, ("aed", "apd"))
    aed["what"] = ("AED (mean |d expression coefficients + jaw|) of the frame with its jaw opened by each level "
                   "(px of the 512^2 frame; piecewise-affine warp of the jaw line and lower lip)")
    record("aed", aed, "AED vs jaw drop")

    rows, ok = [], True
    for c, f in sweep.items():
        for kind in ("jpeg", "blur", "noise"):
            pair = {}
            for strength in ("slight", "heavy"):
                m = fm.evaluate(to_tensor(f), to_tensor(f), to_tensor(degraded(f, kind, strength)), cross=False,
                                source_key=f"{c}/1", driver_key=f"{c}/1")
                pair[strength] = {k: _r(float(m[k])) for k in ("psnr", "ssim", "lpips")}
            s, h = pair["slight"], pair["heavy"]
            right = {"psnr": s["psnr"] > h["psnr"], "ssim": s["ssim"] > h["ssim"], "lpips": s["lpips"] < h["lpips"]}
            ok &= all(right.values())
            rows.append({"clip": c, "kind": kind, **pair, "ordered": right})
    report["pixel_metrics"] = {
        "what": "slight (JPEG q90, blur sigma 0.7, noise sigma 0.01) vs heavy (JPEG q10, blur sigma 4, noise sigma 0.15) "
                "degradation of the frame: PSNR/SSIM higher and LPIPS lower for slight",
        "lpips_network": report["metric_networks"]["lpips"], "pass": ok, "per_case": rows}
    report["all_pass"] = all(report[k]["pass"] for k in ("csim", "akd", "apd", "aed", "pixel_metrics"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
