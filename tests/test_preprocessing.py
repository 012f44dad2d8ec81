"""Pure preprocessing functions (no Ray): geometry of crops, decoding, detection, tracking accuracy
on generated clips and on a real photograph, pair sampling, shard encoding, the GAGAvatar_track
importer and the storage helpers."""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from preprocess_fixtures import draw_frames, make_truth, write_gagatrack, write_video

from model.frame_params import PARAM_SIZE, FrameParams
from model.geometry import euler_to_matrix, look_at_transform, project_points
from pipeline import storage
from pipeline.config import load_config
from preprocessing import crop as C
from preprocessing.clip import ClipSkipped, crop_clip, track_clip, track_image, truth_from_bytes
from preprocessing.config import PreprocessConfig, SamplingConfig, SyntheticDataConfig, TrackingConfig
from preprocessing.detection import DlibFaceDetector, SidecarFaceDetector
from preprocessing.evaluation import compare_with_truth, ray_aligned_rotation, rotation_angle_deg
from preprocessing.landmarks import DlibLandmarkDetector, SidecarLandmarkDetector
from preprocessing.manifest import ClipRow, clip_config_hash, summarize
from preprocessing.sample_format import decode_pair
from preprocessing.sampling import (
    Pair,
    cross_pairs,
    plan_all,
    select_frames,
    self_pairs,
    train_pairs,
)
from preprocessing.shards import (
    decode_frames,
    decode_track,
    encode_frames,
    encode_track,
    pair_sample,
    read_tar,
    tar_bytes,
)
from preprocessing.tracking import LandmarkFlame, closed_form_camera, track_landmarks
from preprocessing.video_io import DecodeError, FrameFolderSource, VideoSource


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tracker's tensors are tiny: one thread is fastest, and on a shared 2-core machine two
    spinning OpenMP threads can make it 10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- geometry


def test_landmark_flame_matches_full_flame(flame):
    g = torch.Generator().manual_seed(0)
    shape, expr = torch.randn(1, 300, generator=g) * 0.5, torch.randn(3, 100, generator=g) * 0.5
    jaw, eyes = torch.randn(3, 3, generator=g) * 0.1, torch.randn(3, 6, generator=g) * 0.1
    pose = torch.cat([torch.zeros(3, 3), jaw], 1)
    with torch.no_grad():
        full = flame(shape.expand(3, -1), expr, pose, eyes).landmarks
        fast = LandmarkFlame(flame)(shape, expr, jaw, eyes)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_closed_form_camera_recovers_pose(flame):
    rot = euler_to_matrix(torch.tensor([0.3, -0.4]), torch.tensor([0.1, 0.2]), torch.tensor([-0.05, 0.1]))
    truth = look_at_transform(8.0, rot, torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.1, -0.2]]))
    with torch.no_grad():
        model = LandmarkFlame(flame)(torch.zeros(1, 300), torch.zeros(1, 100), torch.zeros(1, 3), torch.zeros(1, 6))[0]
    image = project_points(model.expand(2, -1, -1), truth, 12.0, 512, 512)
    est = closed_form_camera(model, image, torch.ones(2, 70), 12.0, 512)
    assert rotation_angle_deg(est[:, :, :3], truth[:, :, :3]).max() < 0.5
    torch.testing.assert_close(est[:, :, 3], truth[:, :, 3], atol=0.05, rtol=0.01)


def test_ray_aligned_rotation_ignores_principal_point():
    # the same head seen off-centre and re-centred (camera turned towards it) compares equal
    rot = euler_to_matrix(torch.tensor([0.2]), torch.tensor([0.1]), torch.tensor([0.0]))
    off = look_at_transform(9.0, rot, torch.tensor([[0.6, -0.4, 0.0]]))
    anchor = torch.zeros(1, 3)
    cam = (anchor @ off[:, :, :3] + off[:, :, 3])[0]
    turn = ray_aligned_rotation(off, anchor)
    recentred = torch.cat([turn, torch.tensor([[[0.0], [0.0], [float(cam.norm())]]])], -1)
    assert rotation_angle_deg(ray_aligned_rotation(recentred, anchor), turn).item() < 1e-3
    assert rotation_angle_deg(off[:, :, :3], turn).item() > 2.0  # the raw rotations differ


def test_crop_boxes_and_image():
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[10:20, 30:40] = 255
    box = np.array([25.0, 5.0, 45.0, 25.0])
    crop_box = C.square_crop_box(box, 2.0)  # side 40 around (35, 15): reaches outside the frame
    np.testing.assert_allclose(crop_box, [15.0, -5.0, 40.0])
    out = C.crop_image(frame, crop_box, 80)
    assert out.shape == (80, 80, 3)
    assert out[:15].max() == 0  # above the frame: black
    assert out[40, 40].min() == 255  # the white square's centre maps to the crop centre
    pts = np.array([[[35.0, 15.0], [15.0, -5.0]]])
    np.testing.assert_allclose(C.to_crop(pts, crop_box[None], 80), [[[40.0, 40.0], [0.0, 0.0]]])
    np.testing.assert_allclose(C.from_crop(C.to_crop(pts, crop_box[None], 80), crop_box[None], 80), pts)
    head = C.face_to_head_box(np.array([10.0, 20.0, 30.0, 40.0]), 1.5, 0.5)
    np.testing.assert_allclose(head, [5.0, 10.0, 35.0, 40.0])


def test_keyframe_interpolation_and_zero_phase_smoothing():
    from preprocessing.presence import KeyframeScan, shot_boxes

    nan = np.full(4, np.nan)
    scan = KeyframeScan(5, (20, 20), np.array([0, 2, 4]), np.stack([[0, 0, 10, 10.0], nan, [4, 0, 14, 10.0]]),
                        np.array([1, 0, 1]), np.zeros((3, 1)), np.zeros((3, 1)))
    np.testing.assert_allclose(shot_boxes(scan, 0, 4)[:, 0], [0, 1, 2, 3, 4])
    assert shot_boxes(scan, 1, 1) is None  # no detected keyframe inside
    # a box moving at constant speed: the centred smoothing follows it without lag (an EMA trails)
    moving = np.stack([np.arange(40.0) * 3] * 4, 1)
    smooth = C.smooth_boxes(moving, 3.0)
    np.testing.assert_allclose(smooth[10:30], moving[10:30], atol=1e-9)
    jitter = moving + np.random.default_rng(0).normal(0, 2, moving.shape)
    assert np.abs(C.smooth_boxes(jitter, 3.0) - moving)[5:35].std() < 0.5 * np.abs(jitter - moving).std()


# ----------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def small_truth(flame):
    return make_truth(flame, 12, 96, 96, seed=3)


def test_video_source_decodes_and_halves_high_fps(tmp_path, small_truth):
    frames = draw_frames(small_truth)
    data = write_video(tmp_path / "a.mp4", frames, fps=25).read_bytes()
    src = VideoSource(data, "a.mp4")
    decoded = dict(src.frames())
    assert len(decoded) == 12 and decoded[0].shape == (96, 96, 3) and src.fps == 25
    assert np.abs(decoded[5].astype(int) - frames[5]).mean() < 8  # lossy but close
    assert [i for i, _ in src.read([7, 3])] == [3, 7]
    assert [i for i, _ in src.keyframes(5)] == [0, 5, 10, 11]
    fast = VideoSource(write_video(tmp_path / "b.mp4", frames, fps=60).read_bytes(), "b.mp4")
    assert len(list(fast.frames())) == 6 and "dropped" in fast.notes[0]
    with pytest.raises(DecodeError, match="empty"):
        VideoSource(b"", "zero.mp4")
    with pytest.raises(DecodeError, match="cannot open|decoding stopped"):
        list(VideoSource(data[: len(data) // 2], "cut.mp4").frames())


def test_frame_folder_source_sorts_naturally():
    import PIL.Image

    def png(v: int) -> bytes:
        buf = io.BytesIO()
        PIL.Image.fromarray(np.full((4, 4, 3), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    files = {f"f{i}.png": png(i) for i in (10, 2, 1)}
    loaded = []
    src = FrameFolderSource(list(files), lambda name: loaded.append(name) or files[name])
    assert [int(f[0, 0, 0]) for _, f in src.frames()] == [1, 2, 10]
    loaded.clear()
    assert [i for i, _ in src.keyframes(5)] == [0, 2] and loaded == ["f1.png", "f10.png"]  # only what is needed


# ----------------------------------------------------------------------------- clips


def _cfg(**sampling) -> PreprocessConfig:
    return PreprocessConfig(detector="sidecar", landmarks="sidecar",
                            sampling=replace(SamplingConfig(), **{"min_frames": 6, **sampling}))


def test_crop_clip_sidecar_and_skips(tmp_path, small_truth):
    data = write_video(tmp_path / "c.mp4", draw_frames(small_truth)).read_bytes()
    cfg = _cfg(max_frames=8)
    clip = crop_clip("c", VideoSource(data), SidecarFaceDetector(small_truth), SidecarLandmarkDetector(small_truth), cfg)
    assert len(clip.frame_ids) == 8 and clip.frame_ids[0] == 0 and clip.frame_ids[-1] == 11
    assert clip.decoded(0).shape == (512, 512, 3) and clip.landmarks.shape == (8, 70, 2)
    inside = (clip.landmarks > 0) & (clip.landmarks < 512)
    assert inside.mean() > 0.95  # the crop holds the face
    with pytest.raises(ClipSkipped, match="too short"):
        crop_clip("c", VideoSource(data), SidecarFaceDetector(small_truth), SidecarLandmarkDetector(small_truth),
                  _cfg(min_frames=20))
    flat = write_video(tmp_path / "flat.mp4", np.full((8, 96, 96, 3), 128, np.uint8)).read_bytes()
    with pytest.raises(ClipSkipped, match="no face"):
        crop_clip("flat", VideoSource(flat), DlibFaceDetector(cfg.detection), SidecarLandmarkDetector(small_truth), cfg)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two generated clips (the project's synthetic mini-VFHQ) with ground truth."""
    from preprocessing.synthetic import ensure_dataset

    cfg = SyntheticDataConfig(identities=2, clips_per_identity=1, frames_per_clip=12, resolution=256,
                              test_identities=1, workers=1)
    return ensure_dataset(cfg, tmp_path_factory.mktemp("synthetic"))


def test_tracking_recovers_generated_ground_truth(generated, flame):
    """Acceptance: median landmark reprojection < 2 px at 512², head rotation < 3° (ray-aligned)."""
    cfg = _cfg()
    results = []
    for video in sorted((generated / "videos").glob("*.mp4")):
        truth = truth_from_bytes((generated / "sidecars" / f"{video.stem}.npz").read_bytes())
        clip = crop_clip(video.stem, VideoSource(video.read_bytes()), SidecarFaceDetector(truth),
                         SidecarLandmarkDetector(truth), cfg)
        track = track_clip(clip, flame, cfg, focal=12.0).track
        params = FrameParams.unpack(track.packed()[0])
        assert np.all(params.pose[:3] == 0) and params.transform_matrix.shape == (3, 4)
        assert np.all((track.bbox >= 0) & (track.bbox <= 1)) and np.all(track.bbox[:, 2:] > track.bbox[:, :2])
        results.append(compare_with_truth(track, truth, clip.frame_ids, clip.crop_boxes, flame))
    landmark = float(np.median([r["landmark_error_px"] for r in results]))
    rotation = float(np.median([r["rotation_error_deg"] for r in results]))
    print(f"generated clips: landmark {landmark:.3f} px @512, rotation {rotation:.2f} deg, {results}")
    assert landmark < 2.0
    assert rotation < 3.0


def test_tracking_real_photograph_with_dlib(flame):
    """Acceptance: dlib finds the astronaut's face; the fitted FLAME landmarks land within 4 px
    (median, 512² crop) of dlib's."""
    from skimage import data

    cfg = PreprocessConfig()
    result = track_image(data.astronaut(), flame, DlibFaceDetector(cfg.detection), DlibLandmarkDetector(), cfg, 12.0)
    err = np.linalg.norm(result.track.landmarks[0, :68] - result.landmarks[:68], axis=-1)
    print(f"astronaut: median {np.median(err):.2f} px, max {err.max():.2f} px")
    assert result.crop.shape == (512, 512, 3)
    assert np.median(err) < 4.0
    assert abs(float(np.median(result.track.residual_px)) - float(np.median(err))) < 1e-3


def test_tracking_ignores_frames_without_landmarks(flame):
    truth = make_truth(flame, 6, 256, 256, seed=5)
    lmk = C.to_crop(truth.landmarks, np.array([[0.0, 0.0, 256.0]] * 6), 512)
    lmk[2] = 1e4  # garbage that must not matter
    valid = np.ones(6, bool)
    valid[2] = False
    track = track_landmarks(flame, lmk, valid, 512, 12.0, replace(TrackingConfig(), rigid_steps=40, steps=80))
    assert np.isfinite(track.transform_matrix).all()
    assert np.median(track.residual_px[valid]) < 2.0
    assert np.abs(track.transform_matrix[2] - track.transform_matrix[1]).max() < 0.5  # carried by its neighbours


# ----------------------------------------------------------------------------- sampling and shards


def test_frame_selection_and_pairs():
    np.testing.assert_array_equal(select_frames(5, 75), np.arange(5))
    sel = select_frames(300, 75)
    assert len(sel) == 75 and sel[0] == 0 and sel[-1] == 299
    frames = np.arange(0, 40, 2)
    pairs = train_pairs("a", frames, 2, seed=1)
    assert len(pairs) == 40 and all(p.source_frame != p.target_frame for p in pairs)
    assert pairs == train_pairs("a", frames, 2, seed=1) and pairs != train_pairs("a", frames, 2, seed=2)
    assert {p.target_frame for p in pairs} == set(frames.tolist())
    assert [(p.source_frame, p.target_frame) for p in self_pairs("t", np.array([3, 5, 7]))] == [(3, 5), (3, 7)]
    clips = {"b": np.array([0, 1, 2]), "a": np.array([0, 4])}
    loader = cross_pairs(clips, "loader")
    assert {(p.source_clip, p.target_clip) for p in loader} == {("b", "a"), ("a", "b")}
    assert Pair("test_cross", "b", 0, "a", 4) in loader  # source: next clip's first frame
    spec = cross_pairs(clips, "paper")
    assert Pair("test_cross", "a", 0, "b", 1) in spec and Pair("test_cross", "a", 0, "b", 2) in spec
    assert Pair("test_cross", "b", 0, "a", 4).key == "b_a_000000_000004"
    plans = plan_all({"x": ("train", np.arange(5)), "y": ("train", np.arange(4)), "t1": ("test", np.arange(3)),
                      "t2": ("test", np.arange(3))}, 1, 0, 4, "loader")
    assert [len(p.pairs) for p in plans["train"]] == [4, 4, 1]
    assert [p.name for p in plans["train"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert sum(len(p.pairs) for p in plans["test_self"]) == 4 and sum(len(p.pairs) for p in plans["test_cross"]) == 4


def _params(v: float) -> np.ndarray:
    return np.full(PARAM_SIZE, v, np.float32)


def test_pair_samples_roundtrip_through_webdataset(tmp_path):
    import PIL.Image
    import webdataset as wds

    from preprocessing.sample_format import encode_image

    img = encode_image(np.full((16, 16, 3), 200, np.uint8))
    pairs = [Pair("train", "c1", 0, "c1", 3), Pair("train", "c1", 3, "c1", 0)]
    meta = {"focal": 12.0, "image_size": 16}
    samples = [pair_sample(p, ("jpg", img), ("jpg", img), _params(1), _params(2), meta) for p in pairs]
    data = tar_bytes(samples)
    assert data == tar_bytes(samples)  # reproducible bytes
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in got] == ["c1_000000_000003", "c1_000003_000000"]
    pair = decode_pair(got[0])
    assert pair["source"].shape == (16, 16, 3) and pair["target_params"][0] == 2.0
    assert pair["meta"]["source_frame"] == 0 and pair["meta"]["split"] == "train"
    assert PIL.Image.open(io.BytesIO(got[0]["source.jpg"])).size == (16, 16)
    frames = encode_frames("c1", np.array([0, 3]), [img, img], "jpg")
    assert sorted(decode_frames("c1", frames)) == [0, 3]
    track = encode_track(frame_ids=np.array([0, 3]), params=np.stack([_params(0), _params(1)]),
                         landmarks=np.zeros((2, 70, 2)), fitted=np.zeros((2, 70, 2)), residual_px=np.zeros(2),
                         crop_boxes=np.zeros((2, 3)))
    assert decode_track(track)["params"].shape == (2, PARAM_SIZE)
    assert list(read_tar(frames)) == ["c1_000000", "c1_000003"]


def test_manifest_rows_and_summary():
    rows = [ClipRow("a", "train", residual_px=0.5, frames_kept=10, truth={"rotation_error_deg": 1.0}),
            ClipRow("b", "test", "skipped", "b: too short")]
    assert ClipRow.from_json(rows[0].to_json()) == rows[0]
    s = summarize(rows, {"train": [{"samples": 10}]})
    assert s["status"] == {"ok": 1, "skipped": 1, "failed": 0} and s["truth"]["rotation_error_deg"] == 1.0
    assert s["reasons"] == {"b": "b: too short"} and s["samples"] == {"train": 10}
    base = load_config("smoke")
    moved = replace(base.preprocess, output="elsewhere", sampling=replace(base.preprocess.sampling, seed=9))
    assert clip_config_hash(base.preprocess, base.flame, 12.0) == clip_config_hash(moved, base.flame, 12.0)
    changed = replace(base.preprocess, crop=replace(base.preprocess.crop, size=96))
    assert clip_config_hash(base.preprocess, base.flame, 12.0) != clip_config_hash(changed, base.flame, 12.0)


# ----------------------------------------------------------------------------- GAGAvatar_track import


def test_gagatrack_import_reads_lmdb_and_pickle(tmp_path):
    from preprocessing.gagatrack_import import iter_clips

    write_gagatrack(tmp_path, {"015252": 6, "v_2": 3})
    (tmp_path / "dataset.json").write_text(json.dumps({"train": [f"015252_{i}" for i in range(6)],
                                                       "test": [f"v_2_{i}" for i in range(3)]}))
    out = list(iter_clips(tmp_path, min_frames=4, max_frames=5))
    clip, short = out[0], out[1]
    assert clip.clip_id == "015252" and clip.split == "train" and len(clip.frame_ids) == 5 and clip.image_size == 32
    assert FrameParams.unpack(clip.params[1]).expression[0] == clip.frame_ids[1]
    assert short == ("v_2", "test", "v_2: too short: 3 tracked frames < sampling.min_frames 4")


def test_gagatrack_import_refuses_pickled_payloads(tmp_path):
    from model.flame_assets import UnsafePickleError
    from preprocessing.gagatrack_import import GagaTrackError, iter_clips

    write_gagatrack(tmp_path, {"a": 3}, payload=pickle.dumps({"tensor": 1}))
    with pytest.raises(GagaTrackError, match="not JPEG or PNG"):
        list(iter_clips(tmp_path, min_frames=1))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "optim.pkl").write_bytes(pickle.dumps({"a_0": Evil()}))
    with pytest.raises(UnsafePickleError):
        list(iter_clips(tmp_path, min_frames=1))


# ----------------------------------------------------------------------------- matting and storage


class _HalfMask(torch.nn.Module):
    """Alpha 1 on the left half of the image, 0 on the right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        cols = torch.arange(w, device=x.device) < (w // 2)
        return cols.to(x.dtype).expand(x.shape[0], 1, x.shape[2], w)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_matting_models_composite_onto_black(tmp_path):
    from preprocessing.matting import composite, load_matting

    script = tmp_path / "matte.ts"
    torch.jit.script(_HalfMask()).save(str(script))
    exported = tmp_path / "matte.pt2"
    dims = {0: torch.export.Dim("n"), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")}
    torch.export.save(torch.export.export(_HalfMask(), (torch.rand(2, 3, 8, 8),), dynamic_shapes=(dims,)), str(exported))
    crops = np.full((2, 8, 8, 3), 100, np.uint8)
    for path in (script, exported):
        out = composite(crops, load_matting(str(path)).alpha(crops))
        assert out[:, :, :4].min() == 100 and out[:, :, 4:].max() == 0
    assert load_matting(None) is None


def test_local_storage_helpers(tmp_path):
    base = str(tmp_path / "root")
    storage.write_text(storage.join(base, "a", "x.txt"), "hi")
    storage.write_bytes(storage.join(base, "b.tar"), b"t")
    assert storage.read_text(storage.join(base, "a", "x.txt")) == "hi"
    assert storage.list_files(base, (".txt",)) == [storage.join(base, "a", "x.txt")]
    assert storage.list_urls(base, ".tar") == [storage.join(base, "b.tar")]
    assert storage.list_dirs(base) == [storage.join(base, "a")]
    with pytest.raises(RuntimeError), storage.open_write(storage.join(base, "c.bin")) as fh:
        fh.write(b"partial")
        raise RuntimeError("interrupted")
    assert not storage.exists(storage.join(base, "c.bin"))  # no half-written file
    assert storage.join("s3://bkt/pre/", "train", "x.tar") == "s3://bkt/pre/train/x.tar"
    assert storage.parse_s3("s3://bkt/pre/x") == ("bkt", "pre/x")
    with pytest.raises(storage.StorageError, match="cannot read"):
        storage.read_bytes(storage.join(base, "missing"))


def test_pool_sizes_keep_room_for_readers():
    from pipeline.preprocess import preprocess_pools
    from preprocessing.config import ResourcesConfig

    res = ResourcesConfig()
    cpu = preprocess_pools(res, {"CPU": 2})
    assert (cpu.trackers, cpu.readers, cpu.tracker_gpus) == (1, 1, 0.0)
    big = preprocess_pools(res, {"CPU": 16})
    assert big.trackers == 8 and big.readers == 8
    gpu = preprocess_pools(replace(res, gpus_per_tracker=0.5), {"CPU": 16, "GPU": 2})
    assert (gpu.trackers, gpu.tracker_gpus, gpu.readers) == (4, 0.5, 12)
