"""Frames without a usable face, cuts between people, several faces, stills and odd inputs, on
generated clips (no Ray): what is dropped is counted, never given landmarks, and no pair mixes
two people."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch
from preprocess_fixtures import concatenated_clip, make_truth, shifted_clip

from pipeline import storage
from pipeline.preprocess import discover_clips
from preprocessing.clip import ClipSkipped, crop_clip, track_clip, track_image
from preprocessing.config import (
    PreprocessConfig,
    PresenceConfig,
    SamplingConfig,
    SyntheticDataConfig,
    TrackingConfig,
)
from preprocessing.crop import to_crop
from preprocessing.detection import DlibFaceDetector, SidecarFaceDetector, choose_face
from preprocessing.landmarks import CropInfo, DlibLandmarkDetector, SidecarLandmarkDetector
from preprocessing.sampling import cross_pairs, self_pairs, train_pairs
from preprocessing.video_io import ArraySource, FrameFolderSource

FAST = replace(TrackingConfig(), rigid_steps=30, steps=60)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**presence) -> PreprocessConfig:
    return PreprocessConfig(detector="sidecar", landmarks="sidecar", tracking=FAST,
                            sampling=replace(SamplingConfig(), min_frames=6, max_frames=0),
                            presence=replace(PresenceConfig(), **presence))


@pytest.fixture(scope="module")
def rendered():
    """Two generated identities, 24 frames each at 128² (rendered, not encoded)."""
    from preprocessing.synthetic import generate_clip

    cfg = SyntheticDataConfig(identities=2, clips_per_identity=1, frames_per_clip=24, resolution=128,
                              test_identities=1, workers=1)
    return [generate_clip(cfg, i, 0) for i in range(2)]


@pytest.fixture(scope="module")
def panned(rendered):
    """Identity 0 while the camera pans: the head leaves the frame (frames 9–15) and comes back."""
    clip = rendered[0]
    shift = np.interp(np.arange(24), [0, 4, 9, 15, 20, 23], [0, 0, 128, 128, 0, 0]).round()
    return shifted_clip(clip.frames, clip.truth, shift)


def _visible(truth) -> np.ndarray:
    p = truth.landmarks[:, :68]
    inside = (p[..., 0] >= 0) & (p[..., 0] < truth.image_size[1]) & (p[..., 1] >= 0) & (p[..., 1] < truth.image_size[0])
    return inside.mean(1)


def test_frames_without_a_visible_face_are_dropped_and_counted(panned):
    frames, truth = panned
    clip = crop_clip("pan", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), _cfg())
    visible = _visible(truth)
    kept = clip.frame_ids
    assert (visible[kept] >= 0.8).all()  # every kept frame shows (most of) the face
    gone = np.flatnonzero(visible < 0.5)
    assert len(gone) >= 6 and not set(gone) & set(kept.tolist())
    assert clip.dropped == 24 - len(kept) >= len(gone)
    assert set(clip.dropped_by) <= {"out_of_frame", "no_landmarks", "inconsistent"} and clip.dropped_by
    # no training pair uses a frame without the face
    assert all(visible[p.source_frame] >= 0.8 and visible[p.target_frame] >= 0.8
               for p in train_pairs("pan", kept, 2, seed=0))


def test_the_crop_follows_a_moving_face_without_lag(panned):
    frames, truth = panned
    clip = crop_clip("pan", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), _cfg())
    centre = clip.crop_boxes[:, :2] + clip.crop_boxes[:, 2:] / 2
    face = truth.landmarks[clip.frame_ids, :68].mean(1)
    size = np.ptp(truth.landmarks[clip.frame_ids, :68, 1], axis=1)
    # the head moves ~25 px (a third of its size) per frame while it leaves and comes back; the
    # crop stays on it (GAGAvatar_track's EMA, α = 0.03, would trail it by ~30 frames)
    offset = np.abs(centre[:, 0] - face[:, 0]) / size
    ema = truth.landmarks[:, :68].mean(1)[:, 0].astype(np.float64)
    for t in range(1, len(ema)):
        ema[t] = 0.03 * ema[t] + 0.97 * ema[t - 1]
    ema_offset = np.abs(ema[clip.frame_ids] - face[:, 0]) / size
    print(f"crop centre − face centre: median {np.median(offset):.3f}, max {offset.max():.3f} face sizes "
          f"(an EMA with α = 0.03: median {np.median(ema_offset):.3f})")
    assert np.median(offset) < 0.15 and offset.max() < 0.5 and np.median(offset) < np.median(ema_offset) / 2


def test_dlib_gives_no_landmarks_where_there_is_no_face():
    lmk = DlibLandmarkDetector()
    info = CropInfo(0, np.array([0.0, 0.0, 512.0]), 512, np.array([150.0, 150.0, 360.0, 380.0]))
    grey = np.full((512, 512, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    assert lmk.detect(grey, info) is None and lmk.detect(noise, info) is None


def test_a_cut_between_two_people_never_mixes_them(rendered):
    a, b = rendered
    frames, truth = concatenated_clip((a.frames, a.truth), (b.frames, b.truth))
    clip = crop_clip("two", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), _cfg())
    assert len(clip.cuts) == 1 and 20 <= clip.cuts[0] <= 25
    people = {int(f >= 24) for f in clip.frame_ids}
    assert len(people) == 1 and len(clip.frame_ids) >= 15
    assert clip.dropped_by.get("other_shot", 0) + clip.dropped_by.get("cut", 0) >= 15
    assert any("cut before frames" in n for n in clip.notes)
    # the same detection without cut detection (thresholds out of reach) keeps both people
    blind = _cfg(cut_frame_distance=2.0, cut_face_distance=2.0, cut_relative=100.0, cut_box_jump=1e9)
    both = crop_clip("two", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), blind)
    assert {int(f >= 24) for f in both.frame_ids} == {0, 1}


def test_several_faces_rule():
    hw = (200, 400)
    big, small = [10, 10, 110, 110], [200, 50, 260, 110]
    assert choose_face(np.array([small, big]), np.array([2.0, 1.0]), hw, 0.15) == 1  # largest
    left, centre = [20, 50, 120, 150], [150, 52, 248, 150]  # 2% apart in area: tied
    assert choose_face(np.array([left, centre]), np.array([2.0, 1.0]), hw, 0.15) == 1  # then most central
    assert choose_face(np.array([left, centre]), np.array([2.0, 1.0]), hw, 0.0) == 0  # no tie: largest
    mirror = [280, 50, 380, 150]  # as central as `left`
    assert choose_face(np.array([left, mirror]), np.array([1.0, 3.0]), hw, 0.15) == 1  # then the score
    # once chosen, a face is followed even when another one is larger
    assert choose_face(np.array([big, small]), np.ones(2), hw, 0.15, previous=np.array(small) + 3) == 1
    assert choose_face(np.zeros((0, 4)), np.zeros(0), hw, 0.15) is None


def test_group_photo_keeps_the_largest_face_and_says_so(flame):
    from skimage import data

    face = PIL.Image.fromarray(data.astronaut())
    canvas = PIL.Image.new("RGB", (896, 512), (90, 90, 90))
    canvas.paste(face, (0, 0))
    canvas.paste(face.resize((384, 384)), (512, 64))
    cfg = replace(PreprocessConfig(), tracking=FAST)
    clip = crop_clip("group", ArraySource(np.asarray(canvas)[None]), DlibFaceDetector(cfg.detection),
                     DlibLandmarkDetector(), cfg, still=True)
    assert clip.faces_max == 2 and any(n.startswith("several faces") for n in clip.notes)
    assert clip.crop_boxes[0, 0] + clip.crop_boxes[0, 2] / 2 < 512  # the big face, on the left
    image = track_image(np.asarray(canvas), flame, DlibFaceDetector(cfg.detection), DlibLandmarkDetector(), cfg, 12.0)
    assert any(n.startswith("several faces") for n in image.notes) and image.track.num_frames == 1


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def test_inputs_stills_and_name_collisions_are_listed(tmp_path, rendered):
    (tmp_path / "portrait.jpg").write_bytes(_png(rendered[0].frames[0]))
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "clip.mkv").write_bytes(b"y")
    (tmp_path / "frames").mkdir()
    for k in range(3):
        (tmp_path / "frames" / f"{k}.png").write_bytes(_png(rendered[0].frames[k]))
    (tmp_path / "train.txt").write_text("clip\nportrait\nframes\n")
    specs = {s.clip_id: s for s in discover_clips(PreprocessConfig(), storage.S3Options(), str(tmp_path))}
    assert specs["portrait"].kind == "still" and specs["frames"].kind == "frames"
    videos = sorted(c for c, s in specs.items() if s.kind == "video")
    assert len(videos) == 2 and videos[0].startswith("clip-mkv") and videos[1].startswith("clip-mp4")
    assert all(specs[c].split == "train" and "shares its name" in specs[c].notes[0] for c in videos)
    from pipeline.config import load_config
    from pipeline.preprocess import make_settings, unused_row

    cfg = load_config("smoke")
    assert unused_row(specs["portrait"], make_settings(cfg, str(tmp_path / "out"))) is None
    off = replace(cfg, preprocess=replace(cfg.preprocess, stills=False))
    row = unused_row(specs["portrait"], make_settings(off, str(tmp_path / "out")))
    assert row.status == "skipped" and "stills is false" in row.reason and row.kind == "still"


def test_a_still_is_a_single_frame_source(rendered):
    clip = rendered[0]
    truth = replace(clip.truth, landmarks=clip.truth.landmarks[:1])
    still = crop_clip("portrait", ArraySource(clip.frames[:1]), SidecarFaceDetector(truth),
                      SidecarLandmarkDetector(truth), _cfg(), still=True)
    assert still.still and len(still.frame_ids) == 1
    with pytest.raises(ClipSkipped, match="too short.*stills"):
        crop_clip("portrait", ArraySource(clip.frames[:1]), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), _cfg())
    ids = still.frame_ids
    assert train_pairs("portrait", ids, 1, 0) == [] and self_pairs("portrait", ids) == []
    cross = cross_pairs({"portrait": ids, "clip": np.arange(5)}, "loader")
    assert [(p.source_clip, p.target_clip) for p in cross] == [("portrait", "clip")] * 4  # a source only


def test_a_corrupt_frame_in_a_folder_drops_that_frame_only(rendered):
    clip = rendered[0]
    files = {f"{k:03d}.png": _png(f) for k, f in enumerate(clip.frames)}
    files["007.png"] = b"\x89PNG garbage"
    source = FrameFolderSource(list(files), files.__getitem__, name="frames/")
    out = crop_clip("frames", source, SidecarFaceDetector(clip.truth), SidecarLandmarkDetector(clip.truth), _cfg())
    assert 7 not in out.frame_ids and len(out.frame_ids) == 23
    assert out.dropped_by == {"unreadable": 1} and any("frame 7" in n and "007.png" in n for n in out.notes)


def test_frames_the_fit_cannot_explain_are_dropped(flame):
    truth = make_truth(flame, 10, 256, 256, seed=5)
    lmk = to_crop(truth.landmarks, np.array([[0.0, 0.0, 256.0]] * 10), 512).astype(np.float32)
    rng = np.random.default_rng(0)
    lmk[[3, 6]] = lmk[[3, 6]][:, rng.permutation(70)]  # landmarks on the wrong points
    from preprocessing.clip import CroppedClip

    clip = CroppedClip("c", np.arange(10), [], lmk, np.array([[0.0, 0.0, 256.0]] * 10, np.float32), 512, "jpg", 10, 25.0)
    cfg = replace(_cfg(), sampling=replace(SamplingConfig(), min_frames=4))
    tracked = track_clip(clip, flame, cfg, 12.0)
    assert tracked.dropped_by == {"residual": 2} and sorted(set(range(10)) - set(tracked.frame_ids.tolist())) == [3, 6]
    assert tracked.residual_px_512 < 2.0
    lenient = replace(cfg, presence=replace(cfg.presence, residual_floor_px=1e6))
    assert track_clip(clip, flame, lenient, 12.0).dropped_by == {}
    tight = replace(cfg, presence=replace(cfg.presence, residual_floor_px=0.0, residual_factor=1.0))
    assert track_clip(clip, flame, tight, 12.0).dropped_by["residual"] >= 4  # half the frames are above the median


def test_presence_thresholds_change_what_is_kept(panned):
    frames, truth = panned
    strict = crop_clip("pan", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth), _cfg())
    lax = crop_clip("pan", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth),
                    _cfg(min_visible=0.3, min_box_overlap=0.0))
    assert len(lax.frame_ids) > len(strict.frame_ids)
    steady = crop_clip("pan", ArraySource(frames), SidecarFaceDetector(truth), SidecarLandmarkDetector(truth),
                       replace(_cfg(), crop=replace(_cfg().crop, smooth_sigma_frames=0.0)))
    assert not np.allclose(steady.crop_boxes, strict.crop_boxes)


def test_expression_cannot_take_over_rigid_motion(flame):
    """The rigid-point prior holds the expression-driven motion of the eye corners and nose down."""
    from preprocessing.tracking import LandmarkFlame, track_landmarks

    truth = make_truth(flame, 8, 256, 256, seed=2)
    lmk = to_crop(truth.landmarks, np.array([[0.0, 0.0, 256.0]] * 8), 512)
    lf = LandmarkFlame(flame)
    motion = []
    for weight in (0.0, 50.0):
        cfg = replace(FAST, rigid_expression_prior=weight)
        track = track_landmarks(flame, lmk, np.ones(8, bool), 512, 12.0, cfg, lmk_flame=lf)
        motion.append(float(lf.rigid_expression_motion(torch.as_tensor(track.expression)).norm(dim=-1).mean()))
    assert motion[1] < 0.5 * motion[0]
