"""MediaPipe's dense landmarks in tracking: a user-given embedding file, the landmark FLAME with a
dense embedding, and (where mediapipe 0.10.14 is installed) the detector and the generated
stand-in embedding on generated clips."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from preprocessing.landmarks import mediapipe_available
from preprocessing.mediapipe_embedding import DenseEmbedding, load_embedding
from preprocessing.tracking import NUM_LANDMARKS, LandmarkFlame

needs_mediapipe = pytest.mark.skipif(not mediapipe_available(),
                                     reason="mediapipe 0.10.14 not installed (docs/preprocessing.md)")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is fastest (two spinning OpenMP threads on a busy 2-core machine
    were 10-20× slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_user_embedding_file_and_dense_landmark_flame(tmp_path, flame):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, flame.faces.shape[0], 12)
    bary = rng.dirichlet(np.ones(3), 12)
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(path, lmk_face_idx=faces, lmk_b_coords=bary, landmark_indices=np.arange(100, 112))
    emb = load_embedding(path)
    assert emb.size == 12 and emb.landmark_indices[0] == 100
    lf = LandmarkFlame(flame, emb)
    g = torch.Generator().manual_seed(1)
    shape, expr = torch.randn(1, 300, generator=g) * 0.5, torch.randn(2, 100, generator=g) * 0.5
    jaw, eyes = torch.randn(2, 3, generator=g) * 0.1, torch.randn(2, 6, generator=g) * 0.1
    with torch.no_grad():
        fast = lf(shape, expr, jaw, eyes)
        verts = flame(shape.expand(2, -1), expr, torch.cat([torch.zeros(2, 3), jaw], 1), eyes).vertices
    tri = verts[:, flame.faces[torch.as_tensor(faces)]]  # [2, 12, 3, 3]
    full = (tri * torch.as_tensor(bary, dtype=torch.float32)[None, :, :, None]).sum(2)
    assert fast.shape == (2, NUM_LANDMARKS + 12, 3)
    torch.testing.assert_close(fast[:, NUM_LANDMARKS:], full, atol=1e-5, rtol=1e-5)
    np.savez(tmp_path / "bad.npz", lmk_face_idx=faces)
    with pytest.raises(ValueError, match="bad.npz: not a MediaPipe landmark embedding"):
        load_embedding(tmp_path / "bad.npz")


def test_dense_points_with_depth_are_fitted(flame):
    """Dense points (and their depths) of a known embedding pin the pose like the 70 do."""
    from preprocess_fixtures import make_truth

    from model.geometry import project_points
    from preprocessing.config import TrackingConfig
    from preprocessing.tracking import track_landmarks

    truth = make_truth(flame, 4, 512, 512, seed=4)
    rng = np.random.default_rng(2)
    emb = DenseEmbedding(np.arange(24), rng.integers(0, 9000, 24), rng.dirichlet(np.ones(3), 24), "test")
    lf = LandmarkFlame(flame, emb)
    with torch.no_grad():
        pts = lf(torch.from_numpy(truth.shape)[None], torch.from_numpy(truth.expression),
                 torch.from_numpy(truth.pose[:, 3:]), torch.from_numpy(truth.eyes))
        tm = torch.from_numpy(truth.transform_matrix)
        uv = project_points(pts, tm, 12.0, 512, 512).numpy()
        z = (pts @ tm[:, :, :3] + tm[:, None, :, 3])[..., 2].numpy()
    depth = (z - z.mean(1, keepdims=True)) * (12.0 * 256) / z.mean(1, keepdims=True)
    dense = np.concatenate([uv[:, 70:], depth[:, 70:, None]], 2)
    cfg = replace(TrackingConfig(), rigid_steps=30, steps=50, ibug_weight_with_dense=0.0)
    track = track_landmarks(flame, uv[:, :70], np.ones(4, bool), 512, 12.0, cfg, lmk_flame=lf, dense=dense)
    assert np.median(track.residual_px) < 1.0  # over the dense points, the only ones weighted
    # each weight is used: the depth term, the 70's weight beside the dense points
    shifted = uv[:, :70] + 3.0  # the 70 disagree with the dense points by 3 px
    base = track_landmarks(flame, shifted, np.ones(4, bool), 512, 12.0, cfg, lmk_flame=lf, dense=dense)
    for change in ({"dense_depth_weight": 0.0}, {"ibug_weight_with_dense": 1.0}):
        other = track_landmarks(flame, shifted, np.ones(4, bool), 512, 12.0, replace(cfg, **change),
                                lmk_flame=lf, dense=dense)
        assert not np.allclose(other.transform_matrix, base.transform_matrix, atol=1e-5), change


@needs_mediapipe
def test_mediapipe_detector_on_a_real_photograph():
    from skimage import data

    from preprocessing.landmarks import CropInfo, DlibLandmarkDetector, MediapipeLandmarkDetector

    image = data.astronaut()
    info = CropInfo(0, np.array([0.0, 0.0, 512.0]), 512, np.array([160.0, 70.0, 300.0, 250.0]))
    points = MediapipeLandmarkDetector().detect(image, info)
    assert points.shape == (70 + 478, 3)
    dlib = DlibLandmarkDetector().detect(image, info)
    iod = np.linalg.norm(dlib[36:42].mean(0) - dlib[42:48].mean(0))
    assert np.median(np.linalg.norm(points[:68, :2] - dlib[:68], axis=1)) < 0.1 * iod  # the measured mapping
    assert MediapipeLandmarkDetector().detect(np.full((512, 512, 3), 128, np.uint8), info) is None


@needs_mediapipe
@pytest.mark.slow
def test_generated_clip_tracked_from_mediapipe(flame):
    """The stand-in head's generated embedding: MediaPipe's points on a rendered generated clip give
    its head rotation to a few degrees (the 70 ground-truth points: ~0.5°). The depth term is off
    here: MediaPipe predicts a human face's depths, which the stand-in head does not have."""
    from preprocessing.clip import TrackerModels, crop_clip, track_clip
    from preprocessing.config import PreprocessConfig, SamplingConfig, SyntheticDataConfig
    from preprocessing.detection import SidecarFaceDetector
    from preprocessing.landmarks import MediapipeLandmarkDetector
    from preprocessing.synthetic import generate_clip
    from preprocessing.video_io import ArraySource

    clip = generate_clip(SyntheticDataConfig(identities=1, frames_per_clip=16, resolution=256, test_identities=0,
                                             workers=1), 0, 0)
    cfg = PreprocessConfig(landmarks="mediapipe", sampling=replace(SamplingConfig(), min_frames=8))
    cfg = replace(cfg, tracking=replace(cfg.tracking, dense_depth_weight=0.0))
    cropped = crop_clip("g", ArraySource(clip.frames), SidecarFaceDetector(clip.truth), MediapipeLandmarkDetector(), cfg)
    assert cropped.dense.shape == (16, 478, 3)
    tracked = track_clip(cropped, TrackerModels(flame), cfg, 12.0, truth=clip.truth)
    print(tracked.truth, tracked.notes)
    assert tracked.truth["rotation_error_deg"] < 6.0 and tracked.residual_px_512 < 4.0
