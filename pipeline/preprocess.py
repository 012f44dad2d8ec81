"""Preprocessing at scale: a Ray Data job from clips (local folder or ``s3://``) to WebDataset
frame-pair shards. The per-clip work is ``preprocessing.clip`` (the same functions that
``gaga-reenact`` and the benchmarks call); this module lists, schedules and writes.

Stages (one Ray Data pipeline over the clips still to do, then one over the shards):

1. **list** (driver): videos (mp4/avi/mov/mkv), frame folders and stills (images directly under
   the input) under ``preprocess.input`` (or its ``videos/``), ground-truth sidecars
   (``sidecars/<clip>.npz``), ``train.txt``/``test.txt``.
2. **read** (CPU actor pool, ``cpus_per_reader`` each, autoscaling): ``crop_clip`` — decode,
   faces on keyframes, cuts, smoothed crops of the kept frames, checked landmarks, optional
   matting; writes ``clips/<clip>.frames.tar``.
3. **track** (actor pool, ``map_batches``; ``gpus_per_tracker`` each when the cluster has GPUs):
   ``track_clip`` — FLAME + camera fit, fit outliers dropped, accuracy vs the sidecar when there
   is one; writes ``clips/<clip>.track.npz`` and then ``clips/<clip>.json`` (the manifest row,
   written last: the marker that the clip is done).
4. **shards** (CPU tasks, ``cpus_per_writer``): pairs planned deterministically from the done clips
   (preprocessing.sampling) into ``train/``, ``test_self/``, ``test_cross/`` as
   ``{split}-{index:06d}.tar``; then ``manifest.jsonl``, ``shards.json``, ``summary.json``.

Rerunning skips clips whose row says ok/skipped under the same per-clip config hash (failed ones are
retried) and shards whose planned content and file already exist, so an interrupted run resumes,
and a finished one reproduces identical shards. Data tracked by GAGAvatar_track is imported by
``pipeline.preprocess_import``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from preprocessing.config import PreprocessConfig, ResourcesConfig
from preprocessing.manifest import ClipRow, clip_config_hash, summarize
from preprocessing.sampling import SPLITS, Pair, ShardPlan, plan_all
from preprocessing.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

from . import storage
from .config import ExperimentConfig
from .ray_data import configure_data_context

log = logging.getLogger(__name__)

CLIPS_DIR = "clips"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
SHARD_INDEX = "shards.json"
FORMAT = "gaga-ray-pairs-v1"
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9+\-=_]")


# ----------------------------------------------------------------------------- settings and specs


@dataclass(frozen=True)
class Settings:
    """Everything a stage needs, shipped to Ray workers (picklable, no live clients)."""

    preprocess: PreprocessConfig
    flame: Any  # model.config.FlameConfig
    focal: float
    output: str
    s3: storage.S3Options
    config_hash: str
    flame_name: str
    landmarks_auto: str = "dlib"  # what ``landmarks: auto`` means for clips without ground truth

    def clip_url(self, clip_id: str, suffix: str) -> str:
        return storage.join(self.output, CLIPS_DIR, f"{clip_id}{suffix}")


@dataclass
class ClipSpec:
    clip_id: str
    split: str  # train | test | "" (not in the lists)
    kind: str  # video | frames | still
    source: str  # the video URL, the frame folder URL, or the image URL
    frames: list[str] = field(default_factory=list)  # image URLs of a frame folder (a still: its image)
    sidecar: str = ""  # ground-truth sidecar URL, when the clip is generated
    aliases: list[str] = field(default_factory=list)  # names train.txt/test.txt may use for it
    notes: list[str] = field(default_factory=list)  # e.g. a renamed id


def make_settings(cfg: ExperimentConfig, output: str | None = None) -> Settings:
    from preprocessing.landmarks import resolve_landmarks

    pcfg = cfg.preprocess
    output = output or pcfg.output
    if not output:
        raise ValueError("no output: set preprocess.output (a folder or s3://bucket/prefix)")
    flame_name = PurePosixPath(cfg.flame.path).name if cfg.flame.path else "generated stand-in head v1"
    # decided once, on the driver, and part of the clips' config hash: workers do not guess
    auto = resolve_landmarks("auto") if pcfg.landmarks == "auto" else pcfg.landmarks
    if pcfg.landmarks == "auto" and auto != "mediapipe":
        log.warning("mediapipe is not installed: landmarks 'auto' uses dlib's 68 points on real clips "
                    "(less reliable on turned heads; docs/preprocessing.md)")
    return Settings(preprocess=pcfg, flame=cfg.flame, focal=cfg.camera.focal, output=output.rstrip("/"),
                    s3=storage.S3Options.from_env(),
                    config_hash=clip_config_hash(pcfg, cfg.flame, cfg.camera.focal, auto),
                    flame_name=flame_name, landmarks_auto=auto)


# ----------------------------------------------------------------------------- listing


def sanitize_clip_id(name: str) -> str:
    """A file/folder stem → a clip id usable in WebDataset keys (no dots, spaces or slashes)."""
    clean = _BAD_ID_CHARS.sub("-", name).strip("-") or "clip"
    if clean != name:  # keep distinct names distinct
        clean = f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return clean


def _read_list(url: str, options: storage.S3Options) -> set[str]:
    """The names a list gives (each as a clip id of its stem and of its whole file name)."""
    ids = set()
    for line in storage.read_text(url, options).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.rsplit("/", 1)[-1]
        ids.add(sanitize_clip_id(name))
        if name.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS):
            ids.add(sanitize_clip_id(name.rsplit(".", 1)[0]))
    return ids


def _first_existing(urls: list[str], options: storage.S3Options) -> str:
    for url in urls:
        if storage.exists(url, options):
            return url
    return ""


def discover_clips(pcfg: PreprocessConfig, options: storage.S3Options, input_url: str | None = None) -> list[ClipSpec]:
    """The clips under the input: ``<input>/videos/`` when it has files (the generated dataset's
    layout), else ``<input>/`` itself. Videos and stills (images, when ``preprocess.stills``)
    directly inside; frame folders one level down. Files that share a stem (``a.mp4``, ``a.mkv``)
    get ids from their whole names (``a-mp4-…``), with a note; a list naming ``a`` selects all."""
    root = (input_url or pcfg.input).rstrip("/")
    if not root:
        raise ValueError("no input: set preprocess.input (a folder or s3://bucket/prefix of videos or frame folders)")
    video_root = storage.join(root, "videos")
    files = storage.list_files(video_root, options=options)
    if not files:
        video_root = root
        files = storage.list_files(root, options=options)
    if not files:
        raise FileNotFoundError(f"{root}: no files (expected videos {', '.join(VIDEO_EXTENSIONS)} or frame folders)")
    sidecars = {PurePosixPath(u).stem: u for u in storage.list_files(storage.join(root, "sidecars"), (".npz",), False, options)}
    prefix = video_root.rstrip("/") + ("/" if storage.is_s3(video_root) else "")
    singles: dict[str, list[tuple[str, str, str]]] = {}  # stem → (file name, url, kind)
    folders: dict[str, list[str]] = {}
    for url in files:
        rel = url[len(prefix):] if storage.is_s3(url) else str(PurePosixPath(storage.local_path(url).relative_to(storage.local_path(video_root)).as_posix()))
        parts = rel.strip("/").split("/")
        name = parts[-1].lower()
        if len(parts) == 1 and name.endswith(VIDEO_EXTENSIONS):
            singles.setdefault(parts[0].rsplit(".", 1)[0], []).append((parts[0], url, "video"))
        elif len(parts) == 1 and name.endswith(IMAGE_EXTENSIONS):
            singles.setdefault(parts[0].rsplit(".", 1)[0], []).append((parts[0], url, "still"))
        elif len(parts) == 2 and name.endswith(IMAGE_EXTENSIONS) and parts[0] != "sidecars":
            folders.setdefault(parts[0], []).append(url)
    specs: dict[str, ClipSpec] = {}
    for stem, entries in sorted(singles.items()):
        shared = len(entries) > 1 or stem in folders
        for filename, url, kind in sorted(entries):
            cid = sanitize_clip_id(filename if shared else stem)
            spec = ClipSpec(cid, "", kind, url, [url] if kind == "still" else [], sidecars.get(stem, ""),
                            aliases=sorted({sanitize_clip_id(stem), sanitize_clip_id(filename)}))
            if shared:
                others = [f for f, _, _ in entries if f != filename] + ([f"{stem}/"] if stem in folders else [])
                spec.notes.append(f"{filename} shares its name with {', '.join(others)}: clip id {cid}")
            if kind == "still" and not pcfg.stills:
                spec.notes.append("preprocess.stills is false: single images are not used")
            specs[cid] = spec
    for folder, frames in sorted(folders.items()):
        cid = sanitize_clip_id(folder)
        spec = ClipSpec(cid, "", "frames", storage.join(video_root, folder), sorted(frames), sidecars.get(folder, ""),
                        aliases=[cid])
        if cid in specs or folder in singles:
            spec.clip_id = sanitize_clip_id(folder + "/")
            spec.notes.append(f"frame folder {folder}/ shares its name with a file: clip id {spec.clip_id}")
        specs[spec.clip_id] = spec
    train_url = pcfg.train_list or _first_existing([storage.join(root, "train.txt"), storage.join(video_root, "train.txt")], options)
    test_url = pcfg.test_list or _first_existing([storage.join(root, "test.txt"), storage.join(video_root, "test.txt")], options)
    train_ids = _read_list(train_url, options) if train_url else None
    test_ids = _read_list(test_url, options) if test_url else None
    for spec in specs.values():
        names = {spec.clip_id, *spec.aliases}
        if test_ids is not None and names & test_ids:
            spec.split = "test"
        elif train_ids is None or names & train_ids:
            spec.split = "train"
    return [specs[c] for c in sorted(specs)]


# ----------------------------------------------------------------------------- per-process caches


@dataclasses.dataclass
class _Cache:
    detectors: dict[str, Any] = dataclasses.field(default_factory=dict)
    matting: dict[str, Any] = dataclasses.field(default_factory=dict)


_CACHE = _Cache()  # Ray reuses worker processes: models load once per worker, not once per clip


def _detectors(settings: Settings, truth: Any) -> tuple[Any, Any]:
    from preprocessing.detection import make_face_detector
    from preprocessing.landmarks import make_landmark_detector

    pcfg = settings.preprocess
    face_name = pcfg.detector if pcfg.detector != "auto" else ("sidecar" if truth is not None else "dlib")
    lmk_name = pcfg.landmarks if pcfg.landmarks != "auto" else ("sidecar" if truth is not None else settings.landmarks_auto)
    if face_name == "sidecar":
        face = make_face_detector(face_name, pcfg.detection, truth)
    else:
        key = f"face:{face_name}"
        if key not in _CACHE.detectors:
            _CACHE.detectors[key] = make_face_detector(face_name, pcfg.detection)
        face = _CACHE.detectors[key]
    if lmk_name == "sidecar":
        lmk = make_landmark_detector(lmk_name, truth)
    else:
        key = f"landmarks:{lmk_name}"
        if key not in _CACHE.detectors:
            _CACHE.detectors[key] = make_landmark_detector(lmk_name)
        lmk = _CACHE.detectors[key]
    return face, lmk


def _matting(settings: Settings) -> Any:
    from preprocessing.matting import load_matting

    path = settings.preprocess.matting_model
    if not path:
        return None
    if path not in _CACHE.matting:
        _CACHE.matting[path] = load_matting(path)
    return _CACHE.matting[path]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unnpz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _fail(row: ClipRow, stage: str, exc: BaseException) -> None:
    from preprocessing.clip import ClipSkipped

    if isinstance(exc, ClipSkipped):
        row.status, row.reason = "skipped", str(exc)
        return
    row.status = "failed"
    row.reason = f"{stage}: {type(exc).__name__}: {exc}"
    if not isinstance(exc, (storage.StorageError, ValueError, FileNotFoundError)):
        row.notes.append(traceback.format_exc(limit=-3))


# ----------------------------------------------------------------------------- stages


def _open_source(spec: ClipSpec, options: storage.S3Options) -> Any:
    from preprocessing.video_io import FrameFolderSource, VideoSource

    if spec.kind == "video":
        return VideoSource(storage.read_bytes(spec.source, options), spec.source)
    return FrameFolderSource(spec.frames, lambda url: storage.read_bytes(url, options), name=spec.source)


def _load_truth(spec: ClipSpec, options: storage.S3Options) -> Any:
    from preprocessing.clip import truth_from_bytes

    return truth_from_bytes(storage.read_bytes(spec.sidecar, options), spec.sidecar) if spec.sidecar else None


def read_clip(spec: ClipSpec, settings: Settings) -> tuple[ClipRow, bytes]:
    """``preprocessing.clip.crop_clip`` on one clip; writes ``<clip>.frames.tar``. Returns the row
    (status ``pending`` when tracking should follow) and the landmarks payload."""
    from preprocessing.clip import ClipSkipped, crop_clip, subsample_truth
    from preprocessing.shards import encode_frames
    from preprocessing.video_io import DecodeError

    row = ClipRow(clip_id=spec.clip_id, split=spec.split, status="pending", source=spec.source,
                  config_hash=settings.config_hash, matting="none", kind=spec.kind, notes=list(spec.notes))
    try:
        truth = _load_truth(spec, settings.s3)
        face, lmk = _detectors(settings, truth)
        row.detector, row.landmarks = face.name, lmk.name
        try:
            source = _open_source(spec, settings.s3)
        except DecodeError as exc:
            raise ClipSkipped(str(exc)) from exc
        if truth is not None and getattr(source, "step", 1) != 1:
            truth = subsample_truth(truth, source.step)
            face, lmk = _detectors(settings, truth)
        clip = crop_clip(spec.clip_id, source, face, lmk, settings.preprocess, _matting(settings),
                         still=spec.kind == "still")
        t0 = time.perf_counter()
        storage.write_bytes(settings.clip_url(spec.clip_id, ".frames.tar"),
                            encode_frames(spec.clip_id, clip.frame_ids, clip.images, clip.image_format), settings.s3)
        row.frames_total, row.fps = clip.frames_total, clip.fps
        row.frames_dropped, row.frames_dropped_by = clip.dropped, dict(clip.dropped_by)
        row.frame_ids = [int(f) for f in clip.frame_ids]
        row.frames_kept, row.matting = len(clip.frame_ids), clip.matting
        row.faces_max, row.cuts, row.notes = clip.faces_max, list(clip.cuts), row.notes + list(clip.notes)
        row.seconds = {**clip.seconds, "write_frames": time.perf_counter() - t0}
        return row, _npz(**clip.landmark_arrays(), fps=np.asarray(clip.fps))
    except Exception as exc:  # every problem becomes a manifest row, never a crashed job
        _fail(row, "read", exc)
        return row, b""


class ReadStage:
    """Ray Data actor (CPU): decoding, detection, cropping and landmarks; keeps the detectors'
    models loaded between clips. Its own pool, so decoding never runs inside (and stalls) the trackers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs, rows, payloads = [], [], []
        for spec_json in batch["spec"]:
            row, payload = read_clip(ClipSpec(**json.loads(spec_json)), self.settings)
            specs.append(spec_json)
            rows.append(row.to_json())
            payloads.append(payload)
        return {"spec": np.asarray(specs, dtype=object), "row": np.asarray(rows, dtype=object),
                "payload": np.asarray(payloads, dtype=object)}


def save_clip(row: ClipRow, track_npz: bytes, settings: Settings) -> ClipRow:
    """Write ``<clip>.track.npz`` and then the row ``<clip>.json`` (the done marker)."""
    try:
        if row.status == "pending":
            storage.write_bytes(settings.clip_url(row.clip_id, ".track.npz"), track_npz, settings.s3)
            row.status = "ok"
    except Exception as exc:
        _fail(row, "save", exc)
    with contextlib.suppress(Exception):  # a row that cannot be written is still returned, and redone next run
        storage.write_text(settings.clip_url(row.clip_id, ".json"), row.to_json(), settings.s3)
    return row


class TrackStage:
    """Ray Data actor: holds FLAME (on the GPU when there is one), runs
    ``preprocessing.clip.track_clip`` on one clip per call and saves its outputs."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from model.flame import FlameModel
        from preprocessing.clip import TrackerModels
        from preprocessing.tracking import resolve_device

        self.settings = settings
        self.device = resolve_device(settings.preprocess.tracking.device)
        torch.manual_seed(0)
        flame = FlameModel.from_config(settings.flame).to(self.device)
        self.models = TrackerModels(flame, settings.flame.path, settings.preprocess.tracking.mediapipe_embedding)

    def track_one(self, spec: ClipSpec, row: ClipRow, payload: bytes) -> bytes:
        from preprocessing.clip import CroppedClip, track_clip
        from preprocessing.shards import encode_track

        arrays = _unnpz(payload)
        clip = CroppedClip.from_landmark_arrays(row.clip_id, arrays, frames_total=row.frames_total,
                                                fps=float(arrays["fps"]), dropped_by=dict(row.frames_dropped_by))
        tracked = track_clip(clip, self.models, self.settings.preprocess, self.settings.focal, self.device,
                             truth=_load_truth(spec, self.settings.s3))
        row.seconds["track"] = tracked.seconds
        row.residual_px, row.residual_px_512, row.truth = tracked.residual_px, tracked.residual_px_512, tracked.truth
        row.frame_ids = [int(f) for f in tracked.frame_ids]
        row.frames_kept = len(row.frame_ids)
        row.frames_dropped_by = tracked.dropped_by
        row.frames_dropped = int(sum(tracked.dropped_by.values()))
        row.notes += [n for n in tracked.notes if n not in row.notes]
        return encode_track(frame_ids=tracked.frame_ids, params=tracked.track.packed(), landmarks=tracked.landmarks,
                            fitted=tracked.track.landmarks, residual_px=tracked.track.residual_px,
                            crop_boxes=tracked.crop_boxes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for spec_json, row_json, payload in zip(batch["spec"], batch["row"], batch["payload"]):
            row = ClipRow.from_json(row_json)
            out = b""
            if row.status == "pending":
                try:
                    out = self.track_one(ClipSpec(**json.loads(spec_json)), row, bytes(payload))
                except Exception as exc:
                    _fail(row, "track", exc)
            rows.append(save_clip(row, out, self.settings).to_json())
        return {"row": np.asarray(rows, dtype=object)}


class _HashingWriter:
    """Pass-through writer that hashes and counts what goes through it."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def shard_stage(item: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Encode the planned pairs of one shard from the clips' artifacts and write the tar."""
    from preprocessing.shards import decode_frames, decode_track, pair_sample, write_tar

    pairs = [Pair(**p) for p in json.loads(item["pairs"])]
    matting = json.loads(item["matting"])
    frames: dict[str, dict[int, tuple[str, bytes]]] = {}
    params: dict[str, dict[int, np.ndarray]] = {}
    for clip in sorted({p.source_clip for p in pairs} | {p.target_clip for p in pairs}):
        frames[clip] = decode_frames(clip, storage.read_bytes(settings.clip_url(clip, ".frames.tar"), settings.s3))
        track = decode_track(storage.read_bytes(settings.clip_url(clip, ".track.npz"), settings.s3), f"{clip}.track.npz")
        params[clip] = {int(f): p for f, p in zip(track["frame_ids"], track["params"])}
    meta = {"format": FORMAT, "focal": settings.focal, "image_size": int(item["image_size"]),
            "flame": settings.flame_name}

    def samples():
        for p in pairs:
            m = {**meta, "matting": matting.get(p.target_clip, "none")}
            yield pair_sample(p, frames[p.source_clip][p.source_frame], frames[p.target_clip][p.target_frame],
                              params[p.source_clip][p.source_frame], params[p.target_clip][p.target_frame], m)

    url = storage.join(settings.output, item["split"], item["name"])
    with storage.open_write(url, settings.s3) as fh:
        writer = _HashingWriter(fh)
        count = write_tar(writer, samples())
    return {"split": item["split"], "name": item["name"], "samples": count, "sha256": writer.digest.hexdigest(),
            "bytes": writer.size, "plan": item["plan"]}


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class PoolSizes:
    readers: int  # CPU reader actors (at most; the pool starts with one and grows)
    trackers: int
    tracker_gpus: float
    tracker_cpus: float
    reader_cpus: float


def preprocess_pools(res: ResourcesConfig, cluster: dict[str, float]) -> PoolSizes:
    """Explicit sizing of the two actor pools from the cluster's resources.

    With GPUs: ``gpus_per_tracker`` each (fractions pack several trackers on one GPU), readers
    get the CPUs the trackers leave. Without: ``reserve_read_fraction`` of the CPUs (at least one
    reader's worth) stays with the readers, the rest goes to trackers. Either way both pools
    always have room, so decoding never starves the trackers and trackers never block readers."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if gpus > 0:
        trackers = res.tracker_actors or max(1, int(gpus / res.gpus_per_tracker))
        tracker_gpus = res.gpus_per_tracker
    else:
        reserve = max(res.cpus_per_reader, math.ceil(cpus * res.reserve_read_fraction))
        trackers = res.tracker_actors or max(1, int((cpus - reserve) / res.cpus_per_tracker))
        tracker_gpus = 0.0
    left = cpus - trackers * res.cpus_per_tracker
    readers = max(1, int(left / res.cpus_per_reader))
    return PoolSizes(readers, trackers, tracker_gpus, res.cpus_per_tracker, res.cpus_per_reader)


# ----------------------------------------------------------------------------- driver


def _existing_rows(settings: Settings, listed: set[str]) -> tuple[dict[str, ClipRow], set[str]]:
    """Rows of clips done earlier (manifest.jsonl first, per-clip JSONs for what it lacks) and the
    set of artifact files present under ``clips/``."""
    present = {storage.basename(u) for u in storage.list_files(storage.join(settings.output, CLIPS_DIR),
                                                                recursive=False, options=settings.s3)}
    rows: dict[str, ClipRow] = {}
    manifest = storage.join(settings.output, MANIFEST)
    if storage.exists(manifest, settings.s3):
        for line in storage.read_text(manifest, settings.s3).splitlines():
            if line.strip():
                row = ClipRow.from_json(line)
                if f"{row.clip_id}.json" in present:
                    rows[row.clip_id] = row
    for clip in sorted(listed):
        if clip not in rows and f"{clip}.json" in present:
            with contextlib.suppress(Exception):
                rows[clip] = ClipRow.from_json(storage.read_text(settings.clip_url(clip, ".json"), settings.s3))
    return rows, present


def _reusable(row: ClipRow | None, settings: Settings, present: set[str]) -> bool:
    if row is None or row.config_hash != settings.config_hash:
        return False
    if row.status == "ok":
        return f"{row.clip_id}.frames.tar" in present and f"{row.clip_id}.track.npz" in present
    if row.status == "failed":
        return not settings.preprocess.retry_failed
    return row.status == "skipped"


def unused_row(spec: ClipSpec, settings: Settings) -> ClipRow | None:
    """The ``skipped`` row of a listed input that is not to be processed (in neither list; a still
    with ``preprocess.stills: false``), or None."""
    reason = ""
    if not spec.split:
        reason = "not in train.txt or test.txt"
    elif spec.kind == "still" and not settings.preprocess.stills:
        reason = f"{spec.source}: a single image (preprocess.stills is false)"
    if not reason:
        return None
    return ClipRow(spec.clip_id, spec.split, "skipped", reason, spec.source, config_hash=settings.config_hash,
                   kind=spec.kind, notes=list(spec.notes))


def process_clips(settings: Settings, specs: list[ClipSpec]) -> tuple[list[ClipRow], dict[str, int]]:
    """Stages 2 and 3 over the clips not done yet; returns every listed clip's row and counts."""
    import ray

    listed = {s.clip_id for s in specs if s.split}
    previous, present = _existing_rows(settings, listed)
    rows: dict[str, ClipRow] = {}
    todo: list[ClipSpec] = []
    for spec in specs:
        unused = unused_row(spec, settings)
        if unused is not None:
            rows[spec.clip_id] = unused
        elif _reusable(previous.get(spec.clip_id), settings, present):
            row = previous[spec.clip_id]
            row.split = spec.split  # the lists may have changed; the clip's outputs did not
            rows[spec.clip_id] = row
        else:
            todo.append(spec)
    log.info("%d clips listed: %d to process, %d done before", len(specs), len(todo), len(rows))
    if todo:
        res = settings.preprocess.resources
        configure_data_context(res.progress_bars)
        sizes = preprocess_pools(res, ray.cluster_resources())
        log.info("pools: %s", sizes)
        items = [{"spec": json.dumps(dataclasses.asdict(s))} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(ReadStage, fn_constructor_kwargs={"settings": settings}, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(sizes.readers, len(todo))),
                            num_cpus=sizes.reader_cpus)
        ds = ds.map_batches(TrackStage, fn_constructor_kwargs={"settings": settings}, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(sizes.trackers, len(todo))),
                            num_cpus=sizes.tracker_cpus, num_gpus=sizes.tracker_gpus or None)
        for out in ds.take_all():
            row = ClipRow.from_json(out["row"])
            rows[row.clip_id] = row
    return [rows[c] for c in sorted(rows)], {"processed": len(todo), "reused": len(specs) - len(todo)}


def _plan(settings: Settings, rows: list[ClipRow]) -> dict[str, list[ShardPlan]]:
    s = settings.preprocess.sampling
    clips = {r.clip_id: (r.split, np.asarray(r.frame_ids, np.int64)) for r in rows if r.status == "ok"}
    return plan_all(clips, s.pairs_per_target, s.seed, s.samples_per_shard, s.cross_pairing)


def write_shards(settings: Settings, rows: list[ClipRow], image_size: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Stage 4: plan, write the shards whose planned content changed or whose file is missing,
    remove stale ones; returns the shard index (per split: name, samples, sha256, bytes, plan)."""
    import ray

    plans = _plan(settings, rows)
    index_url = storage.join(settings.output, SHARD_INDEX)
    previous: dict[str, dict[str, dict[str, Any]]] = {}
    if storage.exists(index_url, settings.s3):
        with contextlib.suppress(ValueError, KeyError):
            previous = {split: {e["name"]: e for e in items} for split, items in json.loads(storage.read_text(index_url, settings.s3)).items()}
    matting = json.dumps({r.clip_id: r.matting for r in rows if r.status == "ok"}, sort_keys=True)
    index: dict[str, list[dict[str, Any]]] = {}
    todo = []
    for split in SPLITS:
        existing = {storage.basename(u) for u in storage.list_files(storage.join(settings.output, split), (".tar",), False, settings.s3)}
        index[split] = []
        for plan in plans[split]:
            old = previous.get(split, {}).get(plan.name)
            if old and old.get("plan") == plan.digest() and plan.name in existing:
                index[split].append(old)
                continue
            todo.append({"split": split, "name": plan.name, "plan": plan.digest(), "image_size": image_size,
                         "pairs": json.dumps([dataclasses.asdict(p) for p in plan.pairs]), "matting": matting})
        for stale in sorted(existing - {p.name for p in plans[split]}):
            storage.remove(storage.join(settings.output, split, stale), settings.s3)
    if todo:
        res = settings.preprocess.resources
        configure_data_context(res.progress_bars)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds = ds.map(shard_stage, fn_kwargs={"settings": settings}, num_cpus=res.cpus_per_writer)
        for entry in ds.take_all():
            index[entry["split"]].append({k: entry[k] for k in ("name", "samples", "sha256", "bytes", "plan")})
    for split in index:
        index[split].sort(key=lambda e: e["name"])
    return index, {"written": len(todo), "reused": sum(len(v) for v in index.values()) - len(todo)}


def finalize(settings: Settings, rows: list[ClipRow], extra: dict[str, Any]) -> dict[str, Any]:
    """Shards, then ``manifest.jsonl``, ``shards.json`` and ``summary.json``; returns the summary."""
    t0 = time.perf_counter()
    image_size = int(extra.pop("image_size", settings.preprocess.crop.size))
    index, shard_counts = write_shards(settings, rows, image_size)
    manifest = "".join(r.to_json() + "\n" for r in rows)
    storage.write_text(storage.join(settings.output, MANIFEST), manifest, settings.s3)
    storage.write_text(storage.join(settings.output, SHARD_INDEX), json.dumps(index, indent=1, sort_keys=True), settings.s3)
    summary = summarize(rows, index)
    summary.update({
        "output": settings.output,
        "splits": {split: storage.join(settings.output, split) for split in SPLITS},
        "config_hash": settings.config_hash,
        "flame": settings.flame_name,
        "focal": settings.focal,
        "image_size": image_size,
        "matting": sorted({r.matting for r in rows if r.status == "ok"}) or ["none"],
        "run": {**extra, "shards_written": shard_counts["written"], "shards_reused": shard_counts["reused"],
                "shard_seconds": time.perf_counter() - t0},
    })
    storage.write_text(storage.join(settings.output, SUMMARY), json.dumps(summary, indent=1, sort_keys=True), settings.s3)
    return summary


def require_face_tools_for(pcfg: PreprocessConfig, specs: list[ClipSpec]) -> None:
    """Real clips (no ground-truth sidecar) are detected with dlib: without the ``faces`` extra the
    job stops before it starts, rather than writing a failed row per clip (which a rerun with
    dlib installed would then reuse)."""
    from preprocessing.face_tools import require_face_tools

    real = [s.clip_id for s in specs if s.split and not s.sidecar]
    if pcfg.detector == "dlib":
        require_face_tools("preprocessing with detector 'dlib'")
    elif pcfg.detector == "auto" and real:
        require_face_tools(f"preprocessing {len(real)} real clip(s) (e.g. {real[0]}; detector 'auto' uses dlib on them)")


def run_preprocess(cfg: ExperimentConfig, input_url: str | None = None, output: str | None = None) -> dict[str, Any]:
    """The whole job on the current Ray cluster (call ``ray.init`` first): list → track → shards.
    Returns the summary (also written to ``<output>/summary.json``)."""
    t0 = time.perf_counter()
    settings = make_settings(cfg, output)
    specs = discover_clips(cfg.preprocess, settings.s3, input_url)
    require_face_tools_for(cfg.preprocess, specs)
    rows, counts = process_clips(settings, specs)
    extra = {"input": (input_url or cfg.preprocess.input), "clips_processed": counts["processed"],
             "clips_reused": counts["reused"], "clip_seconds": time.perf_counter() - t0}
    summary = finalize(settings, rows, extra)
    summary["run"]["seconds"] = time.perf_counter() - t0
    log.info("preprocess done: %s", json.dumps(summary["status"]))
    return summary
