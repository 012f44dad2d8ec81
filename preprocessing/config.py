"""Configs of the preprocessing library (crop, detection, tracking, sampling, generated data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The generated mini-VFHQ: identities × clips × frames of the stand-in head
    (``preprocessing.synthetic``, docs/synthetic.md). Every field but ``workers`` changes the
    output and so the dataset's cache key."""

    identities: int = 8
    clips_per_identity: int = 2
    frames_per_clip: int = 48
    resolution: int = 256  # square frames; must be even (yuv420p)
    fps: int = 25
    test_identities: int = 2  # the last ones form the test list
    seed: int = 0
    head_fill: float = 0.6  # neutral head height / frame height when facing the camera
    supersample: int = 2  # rasterize at s× the resolution and box-filter down (anti-aliasing)
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 15.0
    max_roll_deg: float = 8.0
    max_jaw: float = 0.35  # radians of jaw opening
    crf: int = 18  # x264 constant rate factor (lower: better quality, bigger files)
    x264_preset: str = "medium"
    encoder: Literal["auto", "pyav", "ffmpeg"] = "auto"  # ffmpeg: imageio-ffmpeg's binary; auto: PyAV if it has libx264
    workers: int = 0  # clip-rendering processes; 0: one per CPU core (at most 8). Output is the same.


@dataclass(frozen=True)
class DetectionConfig:
    """Face detection on full frames (``PreprocessConfig.detector``)."""

    max_side: int = 640  # frames are downscaled to this longest side before HOG (speed; faces stay >80 px)
    upsample: int = 0  # dlib HOG pyramid upsampling (1 finds faces down to ~40 px, 4× slower)
    min_score: float = 0.0  # HOG detections below this score are ignored
    # Face boxes (dlib HOG, landmark boxes) cover brows to chin; GAGAvatar's crop factor 1.65 is
    # defined on VGGHead's whole-head box. Widen and raise the face box into a head box first so that
    # crop.scale keeps its meaning.
    head_widen: float = 1.2
    head_raise: float = 0.5  # extend the top by this fraction of the face box height
    # Several faces in a frame: the largest wins; faces within ``size_tie`` (relative area) of the
    # largest count as equally large, then the one nearest the frame centre, then the highest score.
    # On later keyframes the face overlapping the previous choice most is followed.
    size_tie: float = 0.15


@dataclass(frozen=True)
class CropConfig:
    scale: float = 1.65  # square side = scale · sqrt(w·h) of the (smoothed) head box
    size: int = 512  # output crop side
    # Box smoothing over frames, zero-phase (centred Gaussian of this σ, in frames; per shot): it
    # removes detector jitter without the lag of GAGAvatar_track's causal EMA (α = 0.03 trails a
    # moving subject by ~30 frames). 0 disables smoothing.
    smooth_sigma_frames: float = 3.0
    keyframe_interval: int = 5  # detect every k-th frame, interpolate between


@dataclass(frozen=True)
class PresenceConfig:
    """Which frames show a usable face, and where a clip changes shot or person
    (preprocessing/presence.py). A frame that fails is dropped and counted, never given landmarks."""

    min_visible: float = 0.8  # share of the 68 landmarks inside the frame (not in the crop's black padding)
    min_box_overlap: float = 0.3  # IoU of the landmarks' box with the detected/interpolated face box
    # A cut between consecutive keyframes: the colour-histogram (Hellinger) distance of the whole
    # frame or of the face above these and above ``cut_relative`` × the clip's median keyframe-to-
    # keyframe distance, or a face-box jump of more than ``cut_box_jump`` box sizes per keyframe.
    # Measured on 16 real talking-head clips: within a clip ≤ 0.19 (frame) / ≤ 0.33 (face),
    # between two clips' frames ≥ 0.28, 95% ≥ 0.51 (frame) / ≥ 0.23, 95% ≥ 0.42 (face).
    cut_frame_distance: float = 0.3
    cut_face_distance: float = 0.35
    cut_relative: float = 3.0
    cut_box_jump: float = 1.0
    # After tracking: frames whose median 68-landmark residual (px at 512²) exceeds
    # max(residual_floor_px, residual_factor × the clip's median) are dropped (the fit cannot explain them).
    residual_factor: float = 3.0
    residual_floor_px: float = 6.0


@dataclass(frozen=True)
class TrackingConfig:
    """FLAME + camera fit to 2D landmarks (preprocessing/tracking.py). Loss units: pixels at 512²."""

    rigid_steps: int = 100  # stage 1: camera only (rotation 6D + translation), from the closed-form start
    steps: int = 400  # stage 2: everything (shape shared by the clip, per-frame expression/jaw/eyes/camera)
    lr_expression: float = 5.0e-2
    lr_shape: float = 5.0e-2
    lr_jaw: float = 1.0e-2
    lr_eyes: float = 1.0e-2
    lr_pose: float = 1.0e-2  # rotation 6D entries
    lr_translation: float = 1.0e-2  # FLAME×5 world units (the head is ~1 unit wide)
    # Landmarks alone leave a shallow valley between head rotation and shape/expression; these
    # priors (per coefficient², summed; mean over frames) pick the plausible end of it.
    shape_prior: float = 3.0e-4
    expression_prior: float = 1.0e-1
    jaw_prior: float = 1.0  # per radian²
    eye_prior: float = 1.0e-1
    smoothness: float = 1.0e-1  # squared frame-to-frame differences (expression, jaw, eyes, camera)
    contour_weight: float = 0.5  # landmarks 0–16 (jaw line: least reliable in detectors)
    pupil_weight: float = 0.5  # landmarks 68–69 (estimated from eye contours by the dlib path)
    robust_px: float = 8.0  # pseudo-Huber scale: residuals beyond this (px at 512²) count about linearly
    # MediaPipe's dense landmarks (landmarks: mediapipe) are fitted through an embedding on the head:
    # with the generated stand-in head a generated one (preprocessing/mediapipe_embedding.py); with
    # a user-given FLAME ``mediapipe_embedding``: metrical-tracker's
    # ``mediapipe_landmark_embedding.npz`` (lmk_face_idx, lmk_b_coords, landmark_indices).
    mediapipe_embedding: str | None = None
    # weight of the 70 iBUG points read off MediaPipe's mesh relative to a dense point, when the
    # dense ones are fitted (0: where the detector and the head's own 68-point embedding disagree
    # about a point, the embedding made for the detector is the one to trust)
    ibug_weight_with_dense: float = 0.0
    # MediaPipe also predicts each point's depth (same scale as x): weight of matching the model's
    # relative depths to it (px at 512²), so the head's 3D layout, not only its 2D outline, follows
    # the face. Without it the stand-in head reads real pitch swings ~0.65× (bench.tracking_real).
    dense_depth_weight: float = 0.5
    # Expression must not imitate head rotation: weight of the image motion (px² at 512², mean over
    # frames) that expression alone gives the points it barely moves on a face (eye corners, nose),
    # so that rotation has to explain theirs.
    rigid_expression_prior: float = 0.5
    max_frames_per_batch: int = 1024  # frames optimised together (GAGAvatar_track uses 1024)
    device: str = "auto"  # auto: CUDA when present


@dataclass(frozen=True)
class SamplingConfig:
    min_frames: int = 25  # clips shorter than this (or with fewer good frames) are skipped
    max_frames: int = 75  # frames kept per clip, evenly spaced (first frame always kept)
    pairs_per_target: int = 1
    # test_cross over the sorted test clips, wrap-around. "loader": as the official TrackedData
    # (cross_id=True) does: clip i's frames are the targets, clip i+1's first frame the source.
    # "paper": clip i's first frame is the source, clip i+1's frames the targets (the paper's wording).
    cross_pairing: Literal["loader", "paper"] = "loader"
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 95
    samples_per_shard: int = 256
    seed: int = 0


@dataclass(frozen=True)
class ResourcesConfig:
    """Ray Data sizing of the preprocessing job (pipeline/preprocess.py)."""

    tracker_actors: int = 0  # 0: one per GPU (÷ gpus_per_tracker), or CPUs left after reading on CPU clusters
    gpus_per_tracker: float = 1.0  # used only when the cluster has GPUs
    cpus_per_tracker: float = 1.0
    cpus_per_reader: float = 1.0  # decode + detect + crop + landmarks task per clip
    reserve_read_fraction: float = 0.5  # on CPU clusters: share of CPUs kept for reading (never starved)
    cpus_per_writer: float = 1.0  # pair sampling + shard encoding task per shard
    progress_bars: bool = True


@dataclass(frozen=True)
class PreprocessConfig:
    input: str = ""  # folder or s3://bucket/prefix of videos (mp4/avi/mov/mkv) or frame folders
    output: str = ""  # folder or s3://bucket/prefix: train/, test_self/, test_cross/, clips/, manifest
    train_list: str = ""  # default: train.txt next to the videos; without lists every clip is train
    test_list: str = ""  # default: test.txt next to the videos
    # dlib | sidecar (generated clips' ground truth) | auto (sidecar where a clip has one, else dlib)
    detector: Literal["dlib", "sidecar", "auto"] = "dlib"
    # mediapipe (FaceMesh: 478 points, 68 + 2 derived from them) | dlib (68-point predictor) |
    # sidecar | auto (sidecar where a clip has one, else mediapipe when installed, else dlib)
    landmarks: Literal["mediapipe", "dlib", "sidecar", "auto"] = "auto"
    # A folder's images directly under the input become single-frame clips ("stills": test_cross
    # sources, reenactment sources; no train/test_self pairs). False: they are listed as skipped.
    stills: bool = True
    matting_model: str | None = None  # torch.export .pt2 or TorchScript alpha net; None keeps the background
    retry_failed: bool = True  # on rerun, clips whose row says "failed" are processed again
    detection: DetectionConfig = DetectionConfig()
    crop: CropConfig = CropConfig()
    presence: PresenceConfig = PresenceConfig()
    tracking: TrackingConfig = TrackingConfig()
    sampling: SamplingConfig = SamplingConfig()
    resources: ResourcesConfig = ResourcesConfig()
