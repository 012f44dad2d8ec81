"""The two actor stages of the evaluation job (pipeline/eval/run.py), usable without Ray too.

- :class:`RenderStage` (GPU when the cluster has one): holds the model and FLAME; per batch of
  pairs it reconstructs each *new* source once (an LRU cache of reconstructions: every test clip
  has one source frame and many drivers) and renders every pair with FLAME vertices from the
  source's shape and the driver's expression/jaw/eyes, seen by the driver's camera (the official
  inference). It also projects each frame's tracked FLAME landmarks (the alignment fallback).
- :class:`MetricStage` (CPU): holds dlib, the identity network, the 3DMM estimator and LPIPS
  (:class:`pipeline.eval.metrics.face_metrics.FaceMetrics`) and turns every rendered pair into one row of numbers.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig
from .checkpoints import CheckpointInfo, inspect_checkpoint, load_flame, load_model

PANEL_TILE = 256  # grid tiles (source | driver | result), pixels
SOURCE_CACHE = 16  # reconstructions kept per render actor


def decode_image(data: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
        return data
    with Image.open(io.BytesIO(bytes(data))) as img:
        return np.asarray(img.convert("RGB"))


def _to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 (list or [N,H,W,3]) → [N,3,H,W] float in [0,1]."""
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float().div_(255.0)


def _same_size(images: list[np.ndarray]) -> torch.Tensor:
    """H×W×3 uint8 images → [N,3,H,W] at the first one's size (a model may render at another
    resolution than the test crops; the metrics align and resize to 512 afterwards anyway)."""
    size = np.asarray(images[0]).shape[:2]
    tensors = [_to_tensor([i]) for i in images]
    tensors = [t if t.shape[-2:] == size else torch.nn.functional.interpolate(t, size=size, mode="bilinear",
                                                                               antialias=True, align_corners=False)
               for t in tensors]
    return torch.cat(tensors)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] float → [N,H,W,3] uint8 (one host copy per batch)."""
    return (images.detach().float().clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _cache_index(cache, index: torch.Tensor):
    """An AvatarCache with batch rows ``index`` ([B] long) of another (gathers every tensor)."""
    from model.gagavatar import AvatarCache
    from model.gaussian_heads import GaussianAttributes

    out = {}
    for f in dataclasses.fields(cache):
        v = getattr(cache, f.name)
        if isinstance(v, GaussianAttributes):
            v = GaussianAttributes(**{k.name: getattr(v, k.name)[index] for k in dataclasses.fields(v)})
        else:
            v = v[index]
        out[f.name] = v
    return AvatarCache(**out)


def _cache_cat(caches: list):
    from model.gagavatar import AvatarCache
    from model.gaussian_heads import GaussianAttributes

    out = {}
    for f in dataclasses.fields(caches[0]):
        first = getattr(caches[0], f.name)
        if isinstance(first, GaussianAttributes):
            out[f.name] = GaussianAttributes(**{k.name: torch.cat([getattr(getattr(c, f.name), k.name) for c in caches])
                                                for k in dataclasses.fields(first)})
        else:
            out[f.name] = torch.cat([getattr(c, f.name) for c in caches])
    return AvatarCache(**out)


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(round(cpus))))


class RenderStage:
    """Ray Data actor: rendered pairs from pair samples (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, checkpoint: str, cpus: float = 1.0, use_gpu: bool | None = None) -> None:
        _threads(cpus)
        if use_gpu is None:
            use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.info: CheckpointInfo = inspect_checkpoint(checkpoint, cfg)
        self.model = load_model(self.info, self.device)
        self.flame = load_flame(self.info, self.device)
        self.cfg = cfg
        self.sources: OrderedDict[str, Any] = OrderedDict()
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"

    def _autocast(self):
        import contextlib

        if self.cfg.eval.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reconstructions(self, ids: list[str], images: torch.Tensor, transforms: torch.Tensor):
        """One AvatarCache row per pair; sources not cached yet are reconstructed together."""
        new = [i for i, s in enumerate(ids) if s not in self.sources and s not in ids[:i]]
        if new:
            idx = torch.tensor(new, device=self.device)
            with self._autocast():
                cache = self.model.reconstruct(images[idx], transforms[idx]).detach()
            for j, i in enumerate(new):
                self.sources[ids[i]] = _cache_index(cache, torch.tensor([j], device=self.device))
                while len(self.sources) > SOURCE_CACHE:
                    self.sources.popitem(last=False)
        for s in ids:
            self.sources.move_to_end(s)
        return _cache_cat([self.sources[s] for s in ids])

    def _landmarks(self, params: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """Tracked FLAME landmarks [B,70,2] in pixels of a size² crop (the alignment fallback)."""
        from model.geometry import project_points

        out = self.flame(params["shape"], params["expression"], params["pose"], params["eyes"])
        return project_points(out.landmarks, params["transform_matrix"], self.info.config.camera.focal, size, size)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.frame_params import split_params

        t0 = time.perf_counter()
        keys = [str(k) for k in batch["key"]]
        src_u8 = [decode_image(x) for x in batch["source"]]
        tgt_u8 = [decode_image(x) for x in batch["target"]]
        dev = self.device
        src_img, tgt_size = _to_tensor(src_u8).to(dev), tgt_u8[0].shape[0]
        src = split_params(torch.as_tensor(np.stack(batch["source_params"]), dtype=torch.float32, device=dev))
        tgt = split_params(torch.as_tensor(np.stack(batch["target_params"]), dtype=torch.float32, device=dev))
        ids = [f"{c}/{f}" for c, f in zip(batch["source_clip"], batch["source_frame"])]
        cache = self._reconstructions(ids, src_img, src["transform_matrix"])
        # the official inference: the source's shape, the driver's expression, jaw, eyes and camera
        vertices = self.flame(src["shape"], tgt["expression"], tgt["pose"], tgt["eyes"]).vertices
        torch.manual_seed((self.cfg.eval.seed * 1_000_003 + zlib.crc32(keys[0].encode())) % 2**63)  # StyleUNet noise
        with self._autocast():
            out = self.model.render(cache, vertices, tgt["transform_matrix"])
        result = _to_uint8(out.refined)
        src_lmk = self._landmarks(src, src_u8[0].shape[0]).float().cpu().numpy()
        tgt_lmk = self._landmarks(tgt, tgt_size).float().cpu().numpy()
        ms = 1000.0 * (time.perf_counter() - t0) / len(keys)
        passthrough = ("key", "split", "grid", "flame", "source_clip", "target_clip", "source_frame", "target_frame")
        return {
            **{k: np.asarray(batch[k]) for k in passthrough},
            "source": np.stack(src_u8), "target": np.stack(tgt_u8), "result": result,
            "source_landmarks": src_lmk.astype(np.float32), "target_landmarks": tgt_lmk.astype(np.float32),
            "render_ms": np.full(len(keys), ms), "render_device": np.asarray([self.device_name] * len(keys)),
        }


# ----------------------------------------------------------------------------- metrics


def metric_network_names(cfg: ExperimentConfig) -> dict[str, str]:
    """What computes each metric under ``cfg`` (what :func:`build_face_metrics` builds), for the
    results; fallbacks say what they fall back from."""
    from .metrics.face_analysis import DlibFaceAnalyzer

    ev = cfg.eval
    alexnet = ev.alexnet_weights or cfg.loss.alexnet_weights
    names = {
        "alignment": (f"5 keypoints (eye centres, nose tip, mouth corners) from the {DlibFaceAnalyzer.landmarks_name} "
                      f"on the driving frame (tracked FLAME landmarks when dlib finds no face) → square box ×{ev.align_scale:g} → "
                      f"the same crop of driver and result → {ev.metric_size}²"),
        "psnr_ssim": "PSNR / SSIM on RGB in [0,1] (scikit-image definitions: SSIM Gaussian σ=1.5, population covariance)",
        "lpips": (f"LPIPS v0.1 AlexNet (backbone {alexnet})" if alexnet else
                  "LPIPS with a RANDOM AlexNet backbone — not comparable (set eval.alexnet_weights to torchvision's "
                  "alexnet-owt-7be5be79.pth)"),
        "csim": (f"ArcFace ONNX ({ev.arcface_onnx}) cosine similarity" if ev.arcface_onnx else
                 f"{DlibFaceAnalyzer.descriptor_name} cosine similarity — FALLBACK, not the paper's ArcFace: "
                 "set eval.arcface_onnx to an insightface ArcFace .onnx"),
        "csim_reference": ("self: result vs the SOURCE image's identity (the paper's choice is unverified); cross: result vs source"
                           if ev.csim_reference == "source" else "self: result vs the driving frame; cross: result vs source"),
        "aed_apd": (f"FLAME landmark tracker on the single aligned image — FALLBACK, not the paper's Deep3DFaceRecon: "
                    f"AED = mean |Δ| of the first {ev.expression_coefficients} FLAME expression coefficients + jaw (3), "
                    "APD = mean |Δ| of head yaw/pitch/roll in radians"),
        "akd": (f"mean L2 distance of 68 landmarks ({DlibFaceAnalyzer.landmarks_name}, each the mean over 27 slightly "
                f"moved boxes), pixels at {ev.metric_size}²"),
        "face_detection": (f"CSIM, AED, APD and AKD are scored only where the {DlibFaceAnalyzer.detector_name} finds a "
                           "face in the result and in its reference; the other frames are failures, counted, not averaged"),
    }
    return names


def metric_fallback_warnings(cfg: ExperimentConfig) -> list[str]:
    ev = cfg.eval
    out = []
    if not (ev.alexnet_weights or cfg.loss.alexnet_weights):
        out.append("LPIPS with a RANDOM AlexNet backbone — not comparable (needs torchvision's alexnet-owt-7be5be79.pth "
                   "as eval.alexnet_weights)")
    if not ev.arcface_onnx:
        out.append("CSIM uses dlib's face descriptor, not ArcFace (needs an insightface ArcFace .onnx as eval.arcface_onnx)")
    out.append("AED/APD use our FLAME landmark tracker, not the paper's Deep3DFaceRecon (not available here)")
    return out


def build_face_metrics(cfg: ExperimentConfig, info: CheckpointInfo | None = None):
    """FaceMetrics for ``cfg.eval`` on the CPU. The estimator's FLAME is the checkpoint's (the
    FLAME the test data was tracked with, when they match)."""
    from model.flame import FlameModel
    from model.metrics import build_lpips_metric

    from .metrics.expression_estimator import build_estimator
    from .metrics.face_analysis import DlibFaceAnalyzer
    from .metrics.face_metrics import FaceMetrics
    from .metrics.identity import build_identity

    ev = cfg.eval
    used = info.config if info is not None else cfg
    analyzer = DlibFaceAnalyzer()
    identity = build_identity(ev.arcface_onnx, analyzer)
    estimator = build_estimator(FlameModel.from_config(used.flame), cfg.preprocess.tracking, used.camera.focal,
                                ev.expression_coefficients)
    lpips, _ = build_lpips_metric(ev.alexnet_weights or cfg.loss.alexnet_weights, cfg.loss.lpips_weights)
    return FaceMetrics(analyzer, identity, estimator, lpips, ev.metric_size, ev.align_scale, ev.csim_reference)


def _panel(source: np.ndarray, driver: np.ndarray, result: np.ndarray) -> bytes:
    from ..images import encode_png, side_by_side

    return encode_png(side_by_side([source, driver, result], PANEL_TILE))


class MetricStage:
    """Ray Data actor (CPU): rendered pairs → metric rows (see the module docstring)."""

    NUMBERS = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")

    def __init__(self, cfg: ExperimentConfig, checkpoint: str, cpus: float = 1.0) -> None:
        _threads(cpus)
        self.metrics = build_face_metrics(cfg, inspect_checkpoint(checkpoint, cfg))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        for i in range(len(batch["key"])):
            t0 = time.perf_counter()
            split = str(batch["split"][i])
            src_id = f"{batch['source_clip'][i]}/{batch['source_frame'][i]}"
            drv_id = f"{batch['target_clip'][i]}/{batch['target_frame'][i]}"
            images = _same_size([batch["source"][i], batch["target"][i], batch["result"][i]])
            m = self.metrics.evaluate(images[0], images[1], images[2], cross=split == "cross",
                                      driver_fallback=batch["target_landmarks"][i],
                                      source_fallback=batch["source_landmarks"][i],
                                      driver_key=drv_id, source_key=src_id)
            row = {k: float(m[k]) for k in self.NUMBERS}
            # 1/0, NaN when the source was not analysed (self pairs with csim_reference=driver)
            source_face = float(bool(m["source_face"])) if "source_face" in m else math.nan
            row.update(keypoints_from=str(m["keypoints_from"]), result_face=bool(m["result_face"]),
                       driver_face=bool(m["driver_face"]), source_face=source_face,
                       metric_ms=1000.0 * (time.perf_counter() - t0))
            row["panel"] = _panel(batch["source"][i], batch["target"][i], batch["result"][i]) if batch["grid"][i] else b""
            rows.append(row)
        passthrough = ("key", "split", "flame", "source_clip", "target_clip", "source_frame", "target_frame", "render_ms",
                       "render_device")
        out = {k: np.asarray(batch[k]) for k in passthrough}
        for name in rows[0]:
            values = [r[name] for r in rows]
            out[name] = np.asarray(values, dtype=object) if name == "panel" else np.asarray(values)
        return out
