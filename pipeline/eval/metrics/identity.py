"""Identity embeddings for CSIM (cosine similarity of the embeddings of two faces).

- :class:`ArcFaceOnnx`: an insightface-style ArcFace ONNX model (e.g. ``w600k_r50.onnx``,
  ``glintr100.onnx``), run with onnxruntime on the 5-point ``norm_crop`` (112², RGB,
  (x − 127.5)/127.5, NCHW). The paper used the ArcFace inside MICA (docs/released_model.md, Evaluation protocol), a network of the
  same family; give its ONNX export for the closest numbers.
- :class:`DlibIdentity`: dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``
  from face_recognition_models) — the fallback when no ArcFace file is given; not comparable
  with the paper's CSIM.

onnxruntime and dlib are imported when an encoder is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .alignment import arcface_crop, five_points


class IdentityEncoder(Protocol):
    name: str

    def embed(self, image: torch.Tensor, landmarks68: np.ndarray) -> np.ndarray:
        """[3,H,W] float image in [0,1] and the face's [68,2] landmarks → embedding [D]."""


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3,H,W] float in [0,1] → H×W×3 uint8."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


class DlibIdentity:
    def __init__(self, analyzer) -> None:  # face_analysis.DlibFaceAnalyzer
        self.analyzer = analyzer
        self.name = analyzer.descriptor_name

    def embed(self, image: torch.Tensor, landmarks68: np.ndarray) -> np.ndarray:
        return self.analyzer.descriptor(to_uint8(image), landmarks68)


class ArcFaceOnnx:
    """An ArcFace ONNX model; input size read from the model (112 when dynamic)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"eval.arcface_onnx={path}: no such file (an insightface ArcFace .onnx, "
                                    "e.g. w600k_r50.onnx from the buffalo_l pack)")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("eval.arcface_onnx needs onnxruntime (pip install onnxruntime)") from exc
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: onnxruntime cannot load it as an ONNX model ({exc})") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        self.size = int(shape[2]) if len(shape) == 4 and isinstance(shape[2], int) else 112
        self.name = f"ArcFace ONNX ({path.name}, onnxruntime)"

    def embed(self, image: torch.Tensor, landmarks68: np.ndarray) -> np.ndarray:
        crop = arcface_crop(image.float(), five_points(landmarks68), self.size)  # [3,S,S] in [0,1]
        x = ((crop.clamp(0, 1) * 255.0 - 127.5) / 127.5)[None].cpu().numpy().astype(np.float32)
        out = self.session.run(None, {self.input_name: x})[0]
        return np.asarray(out, np.float64).reshape(-1)


def build_identity(arcface_onnx: str | None, analyzer) -> IdentityEncoder:
    """ArcFace when a file is given, else dlib's descriptor (sharing ``analyzer``'s dlib)."""
    if arcface_onnx:
        return ArcFaceOnnx(arcface_onnx)
    return DlibIdentity(analyzer)
