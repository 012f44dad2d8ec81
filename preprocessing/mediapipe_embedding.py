"""Where MediaPipe FaceMesh's dense landmarks sit on the head model: a landmark embedding
(triangle + barycentric coordinates per MediaPipe point), as the 68-point one is for iBUG.

- A user-given FLAME: metrical-tracker's ``mediapipe_landmark_embedding.npz`` (the file the public
  FLAME trackers use; keys ``lmk_face_idx`` [D], ``lmk_b_coords`` [D, 3], ``landmark_indices``
  [D] MediaPipe point ids), named by ``preprocess.tracking.mediapipe_embedding``.
- The generated stand-in head: generated with it (:func:`generate_standin_embedding`): the neutral
  head of a few generated identities is rendered from several views, FaceMesh runs on each
  render, every point is looked up on the rasterized mesh (triangle + barycentrics under the
  pixel) and the per-point median over the renders is kept. So the embedding says where MediaPipe
  itself puts its points on this head. The face oval (its silhouette points slide over the
  surface as the head turns) and the irises (the 70-point set has the pupils) are left out, and
  the rest is thinned to ``MAX_POINTS`` by farthest-point sampling (tracking cost grows with
  the points). Cached next to the generated head, per MediaPipe version.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MAX_POINTS = 96
EMBEDDING_VERSION = "v1"
_VIEWS_DEG = [(yaw, pitch) for yaw in (-20.0, 0.0, 20.0) for pitch in (-10.0, 0.0, 10.0)]  # (yaw, pitch)
_IDENTITIES = 4
_RESOLUTION = 512


@dataclass(frozen=True)
class DenseEmbedding:
    """MediaPipe points on a head mesh: ``landmark_indices`` [D] (0–477), ``faces`` [D] (rows of
    the model's triangle list), ``barycentric`` [D, 3]."""

    landmark_indices: np.ndarray
    faces: np.ndarray
    barycentric: np.ndarray
    name: str

    @property
    def size(self) -> int:
        return int(len(self.landmark_indices))


def load_embedding(path: str | Path) -> DenseEmbedding:
    """metrical-tracker's ``mediapipe_landmark_embedding.npz`` (plain arrays, no pickle)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            faces = np.asarray(data["lmk_face_idx"], np.int64).reshape(-1)
            bary = np.asarray(data["lmk_b_coords"], np.float64).reshape(-1, 3)
            ids = np.asarray(data["landmark_indices"], np.int64).reshape(-1)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a MediaPipe landmark embedding (lmk_face_idx, lmk_b_coords, "
                         f"landmark_indices) ({exc})") from exc
    if not (len(faces) == len(bary) == len(ids)) or ids.min(initial=0) < 0 or ids.max(initial=0) >= 478:
        raise ValueError(f"{path}: embedding arrays disagree in length or name MediaPipe points outside 0–477")
    return DenseEmbedding(ids, faces, bary, path.name)


def _save(embedding: DenseEmbedding, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, lmk_face_idx=embedding.faces, lmk_b_coords=embedding.barycentric,
                 landmark_indices=embedding.landmark_indices)
    tmp.replace(path)


def _farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` of points [N, 3] spread by farthest-point sampling (deterministic:
    starts from the point nearest the centroid)."""
    if len(points) <= count:
        return np.arange(len(points))
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.sort(np.asarray(chosen))


def generate_standin_embedding(max_points: int = MAX_POINTS) -> DenseEmbedding:
    """The stand-in head's MediaPipe embedding (module docstring); ~20 s on one core."""
    from model.geometry import euler_to_matrix, look_at_transform
    from preprocessing.config import SyntheticDataConfig
    from preprocessing.synthetic import raster
    from preprocessing.synthetic.dataset import FOCAL, _head, camera_distance, painted_head, sample_identity
    from preprocessing.synthetic.render import render_frame

    from .landmarks import MediapipeLandmarkDetector, import_mediapipe

    mp = import_mediapipe()
    oval = {i for edge in mp.solutions.face_mesh_connections.FACEMESH_FACE_OVAL for i in edge}
    head = _head()
    faces_t = head.flame.faces
    template = head.flame.v_template.double().numpy()
    faces_np = faces_t.numpy()
    cfg = SyntheticDataConfig(resolution=_RESOLUTION)
    mesh = MediapipeLandmarkDetector(max_faces=1)._mesh
    hits: dict[int, list[tuple[int, np.ndarray]]] = {}
    with torch.no_grad():
        for identity in range(_IDENTITIES):
            painted = painted_head(cfg, identity)
            shape = torch.from_numpy(sample_identity(cfg, identity).shape).unsqueeze(0)
            verts = head.flame(shape).vertices[0]
            for yaw, pitch in _VIEWS_DEG:
                rot = euler_to_matrix(torch.tensor([math.radians(yaw)]), torch.tensor([math.radians(pitch)]),
                                      torch.tensor([0.0]))[0]
                tm = look_at_transform(camera_distance(cfg), rot)
                rgb, _ = render_frame(painted, verts, tm, FOCAL, _RESOLUTION)
                frags = raster.rasterize(raster.screen_coordinates(verts, tm, FOCAL, _RESOLUTION, _RESOLUTION),
                                         faces_t, _RESOLUTION, _RESOLUTION)
                result = mesh.process(rgb)
                if not result.multi_face_landmarks:
                    continue
                for i, p in enumerate(result.multi_face_landmarks[0].landmark[:468]):
                    x, y = int(p.x * _RESOLUTION), int(p.y * _RESOLUTION)
                    if i in oval or not (0 <= x < _RESOLUTION and 0 <= y < _RESOLUTION):
                        continue
                    f = int(frags.face[y, x])
                    if f >= 0:
                        hits.setdefault(i, []).append((f, frags.bary[y, x].double().numpy()))
    ids, faces, bary, points = [], [], [], []
    min_hits = len(_VIEWS_DEG) * _IDENTITIES // 2
    for i in sorted(hits):
        if len(hits[i]) < min_hits:
            continue
        on_template = np.stack([(template[faces_np[f]] * b[:, None]).sum(0) for f, b in hits[i]])
        median = np.median(on_template, 0)
        k = int(np.argmin(np.linalg.norm(on_template - median, axis=1)))  # a real surface point near the median
        ids.append(i)
        faces.append(hits[i][k][0])
        bary.append(hits[i][k][1])
        points.append(on_template[k])
    keep = _farthest_points(np.asarray(points), max_points)
    return DenseEmbedding(np.asarray(ids, np.int64)[keep], np.asarray(faces, np.int64)[keep],
                          np.asarray(bary, np.float64)[keep], f"generated stand-in MediaPipe embedding {EMBEDDING_VERSION}")


def standin_embedding(cache_dir: str | Path | None = None) -> DenseEmbedding:
    """The stand-in head's embedding, generated once and cached per MediaPipe version."""
    from model.procedural_head import GENERATOR_VERSION, default_cache_dir

    from .landmarks import import_mediapipe

    version = import_mediapipe().__version__
    path = Path(cache_dir or default_cache_dir()) / f"mediapipe_embedding_{EMBEDDING_VERSION}_head{GENERATOR_VERSION}_mp{version}.npz"
    if not path.is_file():
        log.info("generating the stand-in head's MediaPipe landmark embedding → %s", path)
        _save(generate_standin_embedding(), path)
    embedding = load_embedding(path)
    return DenseEmbedding(embedding.landmark_indices, embedding.faces, embedding.barycentric,
                          f"generated stand-in MediaPipe embedding {EMBEDDING_VERSION}")


def embedding_for(flame_path: str | None, embedding_path: str | None) -> tuple[DenseEmbedding | None, str]:
    """The embedding to fit MediaPipe's dense points with, and a note: the given file; the
    generated one for the stand-in head; none (only the 68 + 2 points read off MediaPipe's) for a
    user-given FLAME without an embedding file."""
    if embedding_path:
        return load_embedding(embedding_path), f"dense MediaPipe points via {Path(embedding_path).name}"
    if not flame_path:
        return standin_embedding(), "dense MediaPipe points via the generated stand-in embedding"
    return None, ("no preprocess.tracking.mediapipe_embedding for this FLAME (metrical-tracker's "
                  "mediapipe_landmark_embedding.npz): only the 68 + 2 points read off MediaPipe's are fitted")
