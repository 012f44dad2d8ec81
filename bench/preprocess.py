"""Preprocessing benchmark on generated clips: per-stage cost per CPU core (and per GPU tracker
when CUDA exists), and the whole Ray Data job on the local machine.

    python -m bench.preprocess --out bench/results/preprocess_cpu.json
    python -m bench.preprocess --gpu --out bench/results/preprocess_h100.json   # + tracker on CUDA

Per core (one process, one torch thread): the read stage (decode, sidecar boxes, crops of the
kept frames at crop.size, landmarks, JPEG) and the tracker, per clip and per frame; dlib's cost per
frame measured on a real photograph (scikit-image's astronaut: HOG on the frame, HOG again on the
512² crop, 68-point predictor). Job: ``run_preprocess`` on a local Ray cluster with every CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench._report import command_line


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dataset_clips(root: Path) -> list[tuple[str, Callable[[], Any], Any]]:
    """(clip id, frame-source factory, ground truth) of a generated dataset folder (PyAV decoding)."""
    from preprocessing.clip import truth_from_bytes
    from preprocessing.video_io import VideoSource

    return [(v.stem, lambda v=v: VideoSource(v.read_bytes()), truth_from_bytes((root / "sidecars" / f"{v.stem}.npz").read_bytes()))
            for v in sorted((root / "videos").glob("*.mp4"))]


def memory_clips(synth) -> list[tuple[str, Callable[[], Any], Any]]:
    """The same clips rendered in memory and served as PNG frames (machines without PyAV)."""
    from preprocessing.sample_format import encode_image
    from preprocessing.synthetic import generate_clip
    from preprocessing.video_io import FrameFolderSource

    out = []
    for identity in range(synth.identities):
        clip = generate_clip(synth, identity, 0)
        pngs = {f"{k:05d}.png": encode_image(f, "png") for k, f in enumerate(clip.frames)}
        out.append((clip.clip_id, lambda p=pngs: FrameFolderSource(list(p), p.__getitem__), clip.truth))
    return out


def bench_stages(clips: list[tuple[str, Callable[[], Any], Any]], cfg, flame, device: str) -> dict:
    from preprocessing.clip import crop_clip, track_clip
    from preprocessing.detection import SidecarFaceDetector
    from preprocessing.landmarks import SidecarLandmarkDetector

    pcfg = cfg.preprocess
    read_s, track_s, frames = [], [], []
    warm = replace(pcfg, tracking=replace(pcfg.tracking, rigid_steps=5, steps=5))
    for i, (clip_id, source, truth) in enumerate(clips):
        t0 = time.perf_counter()
        clip = crop_clip(clip_id, source(), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), pcfg)
        t1 = time.perf_counter()
        if i == 0:  # the first autograd/CUDA calls of a process cost ~1 s: not per clip
            track_clip(clip, flame, warm, cfg.camera.focal, device=device)
        t1b = time.perf_counter()
        track_clip(clip, flame, pcfg, cfg.camera.focal, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        read_s.append(t1 - t0)
        track_s.append(t2 - t1b)
        frames.append(len(clip.frame_ids))
    k = statistics.median(frames)
    return {
        "clips": len(clips), "frames_per_clip": k,
        "read_s_per_clip": statistics.median(read_s), "track_s_per_clip": statistics.median(track_s),
        "read_frames_per_s": k / statistics.median(read_s), "track_frames_per_s": k / statistics.median(track_s),
    }


def bench_dlib(pcfg) -> dict:
    from skimage import data

    from preprocessing.crop import crop_image, face_to_head_box, square_crop_box, to_crop
    from preprocessing.detection import DlibFaceDetector
    from preprocessing.landmarks import CropInfo, DlibLandmarkDetector

    image = data.astronaut()
    det, lmk = DlibFaceDetector(pcfg.detection), DlibLandmarkDetector()
    face = det.detect(image, 0)
    box = square_crop_box(face_to_head_box(face, pcfg.detection.head_widen, pcfg.detection.head_raise), pcfg.crop.scale)
    crop = crop_image(image, box, pcfg.crop.size)
    info = CropInfo(0, box, pcfg.crop.size, to_crop(face.reshape(2, 2), box, pcfg.crop.size).reshape(4))
    return {
        "image": "skimage astronaut 512x512",
        "hog_frame_ms": 1e3 * _median_time(lambda: det.detect(image, 0), 5),
        "crop_ms": 1e3 * _median_time(lambda: crop_image(image, box, pcfg.crop.size), 5),
        "landmarks_on_crop_ms": 1e3 * _median_time(lambda: lmk.detect(crop, info), 5),
    }


def bench_job(root: Path, cfg) -> dict:
    import ray

    from pipeline.preprocess import run_preprocess
    from pipeline.ray_cluster import ensure_ray

    ensure_ray()
    cpus = ray.cluster_resources().get("CPU", 1)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_preprocess(cfg, str(root), out)
        seconds = time.perf_counter() - t0
    n, frames = summary["status"]["ok"], summary["frames_kept"]
    return {
        "cpus": cpus, "gpus": ray.cluster_resources().get("GPU", 0), "clips": n, "frames": frames,
        "seconds": seconds, "clips_per_min": 60 * n / seconds, "frames_per_s": frames / seconds,
        "clips_per_min_per_cpu": 60 * n / seconds / cpus, "frames_per_s_per_cpu": frames / seconds / cpus,
        "clip_stage_seconds": summary["run"]["clip_seconds"], "shard_stage_seconds": summary["run"]["shard_seconds"],
        "truth": summary.get("truth"), "samples": summary.get("samples"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/preprocess_cpu.json")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--clips", type=int, default=4, help="generated clips (identities × 1)")
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--gpu", action="store_true", help="also time the tracker on CUDA")
    parser.add_argument("--no-job", action="store_true", help="skip the end-to-end Ray job")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the tracker on CUDA, clips rendered in memory (no PyAV, no Ray needed)")
    args = parser.parse_args()

    from model.flame import FlameModel
    from pipeline.config import load_config
    from preprocessing.config import SyntheticDataConfig
    from preprocessing.synthetic import ensure_dataset

    cfg = load_config(args.config, ["preprocess.detector=sidecar", "preprocess.landmarks=sidecar",
                                    "preprocess.resources.progress_bars=false"])
    cfg = replace(cfg, preprocess=replace(cfg.preprocess, sampling=replace(cfg.preprocess.sampling, min_frames=min(25, args.frames))))
    synth = SyntheticDataConfig(identities=args.clips, clips_per_identity=1, frames_per_clip=args.frames,
                                resolution=args.resolution, test_identities=1, workers=1)
    torch.set_num_threads(1)  # per-core figures
    flame = FlameModel.from_config(cfg.flame)
    result = {
        "bench": "preprocess", "config": args.config, "crop_size": cfg.preprocess.crop.size,
        "command": command_line("bench.preprocess", sys.argv[1:]),
        "tracking_steps": {"rigid": cfg.preprocess.tracking.rigid_steps, "joint": cfg.preprocess.tracking.steps},
        "dataset": {"clips": args.clips, "frames": args.frames, "resolution": args.resolution},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    if args.gpu_only:  # the GPU tracker actor's throughput; frames served from memory
        if not torch.cuda.is_available():
            raise SystemExit("--gpu-only needs CUDA")
        result["per_gpu_tracker"] = bench_stages(memory_clips(synth), cfg, flame.cuda(), "cuda")
        result["note"] = "per GPU tracker (one clip per call); read stage = PNG frames from memory, not video decoding"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        print(json.dumps(result, indent=1, default=float))
        return
    root = ensure_dataset(synth)
    result["dataset"]["cache_key"] = root.name  # under the generated-data cache, not a machine path
    clips = dataset_clips(root)
    result["per_cpu_core"] = bench_stages(clips, cfg, flame, "cpu")
    result["dlib_per_frame"] = bench_dlib(cfg.preprocess)
    core = result["per_cpu_core"]
    dlib = result["dlib_per_frame"]
    k = cfg.preprocess.crop.keyframe_interval
    dlib_s = core["frames_per_clip"] * (dlib["hog_frame_ms"] / k + dlib["hog_frame_ms"] + dlib["landmarks_on_crop_ms"]) / 1e3
    result["derived_per_cpu_core"] = {
        "sidecar_clips_per_min": 60 / (core["read_s_per_clip"] + core["track_s_per_clip"]),
        "dlib_clips_per_min": 60 / (core["read_s_per_clip"] + core["track_s_per_clip"] + dlib_s),
        "note": "dlib path ≈ sidecar path + HOG on every k-th frame + HOG and predictor on each kept crop",
    }
    if args.gpu and torch.cuda.is_available():
        result["per_gpu_tracker"] = bench_stages(clips, cfg, flame, "cuda")
    if not args.no_job:
        result["job_local_ray"] = bench_job(root, cfg)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
