"""Evaluation metrics (CPU): PSNR/SSIM against scikit-image, the alignment geometry, CSIM, AKD,
AED/APD on skimage's astronaut and on the generated mini-VFHQ (smoke preset's dataset); face
metrics refuse images without a face; the report counts the frames scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model.metrics import psnr, ssim
from pipeline.eval.metrics.alignment import (
    ARCFACE_TEMPLATE_112,
    alignment_box,
    arcface_crop,
    box_points,
    crop_resize,
    five_points,
)


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


def _shift(image: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(image)
    out[:, k:] = image[:, : image.shape[1] - k]
    return out


# ----------------------------------------------------------------------------- PSNR / SSIM


def _skimage(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    x, y = a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy()
    return (peak_signal_noise_ratio(y, x, data_range=1.0),
            structural_similarity(x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False))


def test_psnr_ssim_match_skimage_on_random_and_real_pairs():
    g = torch.Generator().manual_seed(0)
    real = _t(astronaut())[:, 100:356, 120:376]  # 256² of the astronaut
    blurred = torch.nn.functional.avg_pool2d(real[None], 5, 1, 2, count_include_pad=False)[0]
    noisy = (real + 0.05 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    pairs = [(torch.rand(3, 64, 80, generator=g), torch.rand(3, 64, 80, generator=g)), (noisy, real), (blurred, real)]
    for a, b in pairs:
        want_p, want_s = _skimage(a, b)
        assert abs(float(psnr(a[None], b[None])[0]) - want_p) < 1e-4
        assert abs(float(ssim(a[None], b[None])[0]) - want_s) < 1e-4


# ----------------------------------------------------------------------------- alignment geometry


def test_alignment_crop_maps_points_like_box_points():
    image = torch.zeros(3, 100, 120)
    image[:, 40, 70] = 1.0  # pixel (row 40, col 70): centre (70.5, 40.5)
    kps = np.array([[60.0, 35.0], [80.0, 35.0], [70.0, 45.0], [62.0, 55.0], [78.0, 55.0]])
    box = alignment_box(kps, 3.0)
    assert box[2] == pytest.approx(60.0) and box[:2] == pytest.approx([40.0, 15.0])
    crop = crop_resize(image, box, 120)  # ×2
    y, x = np.unravel_index(int(crop[0].argmax()), crop.shape[1:])
    assert np.allclose(box_points(np.array([[70.5, 40.5]]), box, 120)[0], [x + 1.0, y + 1.0], atol=1.0)
    # a box reaching outside the image pads with black
    outside = crop_resize(torch.ones(3, 50, 50), np.array([-25.0, -25.0, 100.0]), 100)
    assert outside[:, :20, :20].max() == 0 and outside[:, 40:60, 40:60].min() == 1


def test_arcface_crop_puts_keypoints_on_the_template():
    rng = np.random.default_rng(0)
    kps = ARCFACE_TEMPLATE_112 * 1.7 + np.array([30.0, 20.0]) + rng.normal(0, 0.3, (5, 2))
    yy, xx = np.mgrid[0:260, 0:260] + 0.5  # pixel centres
    blobs = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2)) for x, y in kps)
    image = torch.from_numpy(blobs).float()[None].repeat(3, 1, 1)
    crop = arcface_crop(image, kps, 112)[0].numpy()
    for tx, ty in ARCFACE_TEMPLATE_112:  # template: cv2 pixel indices = our centres − 0.5
        cy, cx = int(round(ty)), int(round(tx))
        window = crop[cy - 3:cy + 4, cx - 3:cx + 4]
        wy, wx = np.unravel_index(int(window.argmax()), window.shape)
        assert window.max() > 0.5 and abs(wx - 3) <= 1 and abs(wy - 3) <= 1


def test_head_pose_angles_recover_the_generator_rotation():
    from model.geometry import euler_to_matrix, look_at_transform
    from pipeline.eval.metrics.expression_estimator import head_pose_angles

    angles = torch.tensor([[0.3, -0.1, 0.05], [-0.2, 0.15, -0.1]])
    transform = look_at_transform(9.3, euler_to_matrix(*angles.unbind(-1)))
    for t, a in zip(transform, angles):
        assert np.allclose(head_pose_angles(t.numpy()), a.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- dlib metrics


@pytest.fixture(scope="module")
def analyzer():
    from pipeline.eval.metrics.face_analysis import DlibFaceAnalyzer

    return DlibFaceAnalyzer()


def test_akd_is_zero_for_the_same_image_and_follows_a_shift(analyzer):
    from pipeline.eval.metrics.face_metrics import keypoint_distance

    img = astronaut()
    base = analyzer.landmarks(img, analyzer.detect(img))
    assert keypoint_distance(base, base) == 0.0
    for k in (2, 5, 10):
        moved = _shift(img, k)
        akd = keypoint_distance(analyzer.landmarks(moved, analyzer.detect(moved)), base)
        assert abs(akd - k) < 0.25 * k + 0.5, (k, akd)


@pytest.fixture(scope="module")
def face_metrics(analyzer):
    from model.flame import FlameModel
    from pipeline.config import load_config
    from pipeline.eval.metrics.expression_estimator import FlameTrackerEstimator
    from pipeline.eval.metrics.face_metrics import FaceMetrics
    from pipeline.eval.metrics.identity import DlibIdentity

    cfg = load_config("smoke")
    estimator = FlameTrackerEstimator(FlameModel.from_config(cfg.flame), cfg.preprocess.tracking, cfg.camera.focal, 50)
    return FaceMetrics(analyzer, DlibIdentity(analyzer), estimator, lpips=None)


def test_face_metrics_on_identical_and_shifted_images(face_metrics):
    img = _t(astronaut())
    same = face_metrics.evaluate(img, img, img, cross=False)
    assert same["psnr"] > 100 and same["ssim"] == pytest.approx(1.0)
    assert same["csim"] == pytest.approx(1.0, abs=1e-9) and same["akd"] == 0.0
    assert same["aed"] == 0.0 and same["apd"] == 0.0
    # aligned crops are zoomed: a k-pixel shift becomes k·512/side pixels
    k = 4
    moved = face_metrics.evaluate(img, img, _t(_shift(astronaut(), k)), cross=False)
    zoom = 512 / face_metrics.driver(img).box[2]
    assert abs(moved["akd"] - k * zoom) < 0.3 * k * zoom, (moved["akd"], k * zoom)
    assert moved["psnr"] < 40 and moved["csim"] > 0.9


def _not_faces() -> dict[str, np.ndarray]:
    """512² images that hold no face: an orange head-sized blob (what an untrained model renders),
    the astronaut blurred beyond recognition (Gaussian σ = 9 px ≈ 0.1 × its 88 px face box, the
    heavy blur of bench/metrics_real.py) and uniform noise."""
    from PIL import ImageFilter

    yy, xx = np.mgrid[0:512, 0:512] + 0.5
    blob = np.exp(-((xx - 256) ** 2 / (2 * 90.0**2) + (yy - 240) ** 2 / (2 * 120.0**2)))
    return {
        "blob": (blob[..., None] * np.array([230.0, 140.0, 80.0])).astype(np.uint8),
        "blurred face": np.asarray(Image.fromarray(astronaut()).filter(ImageFilter.GaussianBlur(9))),
        "noise": np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8),
    }


def test_face_metrics_refuse_what_is_not_a_face(face_metrics, analyzer):
    """A blob, a blurred face and noise get no CSIM/AED/APD/AKD (NaN: not scored) as results, and
    a source without a face gives no CSIM either; the pixel metrics are still computed. Scoring
    whatever the alignment box holds would have given a blob a high CSIM (checked last)."""
    from pipeline.eval.metrics.identity import cosine_similarity

    face = _t(astronaut())
    real = face_metrics.evaluate(face, face, _t(_shift(astronaut(), 3)), cross=False)
    assert real["result_face"] and real["csim"] > 0.9 and np.isfinite(real["akd"]) and np.isfinite(real["aed"])
    for name, image in _not_faces().items():
        for cross in (False, True):
            m = face_metrics.evaluate(face, face, _t(image), cross=cross, driver_key="astronaut", source_key="astronaut")
            assert not m["result_face"] and m["driver_face"] and m["source_face"], name
            assert all(np.isnan(m[k]) for k in ("csim", "aed", "apd", "akd")), (name, cross, m)
            if not cross:
                assert np.isfinite(m["psnr"]) and m["psnr"] < 25 and m["ssim"] < 0.9, (name, m)
        as_source = face_metrics.evaluate(_t(image), face, face, cross=True, source_key=name)
        assert not as_source["source_face"] and np.isnan(as_source["csim"]), name
    # what the fallback did before: dlib's descriptor of the blob on the box where a face would be
    blob = _not_faces()["blob"]
    box = np.array([512 / 3, 512 / 3, 2 * 512 / 3, 2 * 512 / 3])
    old = cosine_similarity(analyzer.descriptor(blob, analyzer.landmarks(blob, box)),
                            face_metrics.source(face, key="astronaut").embedding)
    assert old > 0.8, old


def test_report_counts_frames_scored_and_says_not_scored():
    """aggregate → frames scored per face metric; results.md shows (n/N) and "not scored"; a
    split with unscored frames gets a warning."""
    from pipeline.eval import report

    nan = float("nan")

    def row(split, csim, akd=None, face=True):
        return {"split": split, "key": "k", "source_clip": "a", "target_clip": "b", "psnr": 20.0, "ssim": 0.5,
                "lpips": 0.3, "csim": csim, "aed": csim, "apd": csim, "akd": akd, "keypoints_from": "dlib",
                "driver_face": True, "result_face": face, "source_face": True}

    rows = [row("self", 0.6, 3.0), row("self", nan, nan, False), row("self", 0.8, 5.0),
            row("cross", None, face=False), row("cross", nan, face=False)]
    agg = report.aggregate(rows)
    assert agg["self"]["pairs"] == 3 and agg["self"]["scored"] == {"csim": 2, "aed": 2, "apd": 2, "akd": 2}
    assert agg["self"]["csim"] == pytest.approx(0.7) and agg["self"]["akd"] == pytest.approx(4.0)
    assert agg["self"]["psnr"] == pytest.approx(20.0) and agg["self"]["scored_rate"]["csim"] == pytest.approx(2 / 3)
    assert agg["cross"]["csim"] is None and agg["cross"]["scored"]["csim"] == 0
    warnings = report.scoring_warnings(agg)
    assert warnings[0].startswith("self: face metrics scored on fewer than all 3 frames (CSIM 2, AED 2, APD 2, AKD 2)")
    assert warnings[1].startswith("cross: face metrics scored on fewer than all 2 frames (CSIM 0, AED 0, APD 0)")
    table = report.table1(agg, "ours", warnings)
    md = report.table1_markdown(table)
    assert "| **ours** | 20.00 | 0.500 | 0.300 | 0.700 (2/3) |" in md and "not scored (0/2)" in md
    csv_rows = report.table1_csv(table).splitlines()
    header = csv_rows[0].split(",")
    assert "self_frames" in header and "cross_csim_scored" in header
    ours = dict(zip(header, csv_rows[1].split(",")))
    assert ours["self_frames"] == "3" and ours["self_akd_scored"] == "2" and ours["cross_csim_scored"] == "0"


@pytest.fixture(scope="module")
def generated():
    """The smoke preset's generated dataset: clip id → (frames [K,H,W,3], ground truth)."""
    from pipeline.config import load_config
    from preprocessing.sidecar import load_sidecar
    from preprocessing.synthetic import ensure_dataset, read_video

    root = ensure_dataset(load_config("smoke").synthetic)
    clips = ("synth000c00", "synth001c00", "synth002c00", "synth003c00", "synth003c01")
    return {c: (read_video(root / "videos" / f"{c}.mp4"), load_sidecar(root / "sidecars" / f"{c}.npz")) for c in clips}


def _up(frame: np.ndarray, size: int = 512) -> torch.Tensor:
    return _t(np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC)))


def test_steady_landmarks_jitter_less_than_one_predictor_run(analyzer, generated):
    """A generated 64² face vs the same face blurred by σ 0.5 px (both upsampled to 512²): one
    predictor run moves the 68 points by pixels, the mean over 27 boxes by clearly less."""
    from PIL import ImageFilter

    from pipeline.eval.metrics.face_metrics import keypoint_distance

    frames = generated["synth003c00"][0]
    plain, steady = [], []
    for k in (0, 8, 16, 24):
        small = Image.fromarray(frames[k]).resize((64, 64), Image.Resampling.BICUBIC)
        a, b = (np.asarray(i.resize((512, 512), Image.Resampling.BILINEAR))
                for i in (small, small.filter(ImageFilter.GaussianBlur(0.5))))
        box_a, box_b = analyzer.detect(a), analyzer.detect(b)
        assert box_a is not None and box_b is not None, k
        plain.append(keypoint_distance(analyzer.landmarks(b, box_b), analyzer.landmarks(a, box_a)))
        steady.append(keypoint_distance(analyzer.steady_landmarks(b, box_b), analyzer.steady_landmarks(a, box_a)))
    assert np.mean(steady) < 0.8 * np.mean(plain), (plain, steady)


def test_csim_separates_generated_identities(face_metrics, generated):
    from pipeline.eval.metrics.identity import cosine_similarity

    def embedding(frame: np.ndarray) -> np.ndarray:
        return face_metrics.source(_up(frame)).embedding

    frames = generated["synth002c00"][0]
    anchor = embedding(frames[2])
    assert cosine_similarity(anchor, anchor) == pytest.approx(1.0)
    same_identity = cosine_similarity(anchor, embedding(frames[12]))
    others = [cosine_similarity(anchor, embedding(generated[c][0][2])) for c in ("synth000c00", "synth001c00", "synth003c00")]
    assert same_identity > max(others), (same_identity, others)


def test_aed_apd_grow_with_the_expression_and_pose_difference(face_metrics, generated):
    from pipeline.eval.metrics.expression_estimator import head_pose_angles

    frames, truth = generated["synth003c01"]
    code = lambda k: np.concatenate([truth.expression[k, :50], truth.pose[k, 3:]])
    pose = lambda k: head_pose_angles(truth.transform_matrix[k])
    ref = _up(frames[0])
    same = face_metrics.evaluate(ref, ref, ref, cross=False, driver_key="f0")
    assert same["aed"] == 0.0 and same["apd"] == 0.0

    def measure(pairs):  # result = frame a, driver = frame b: (AED, APD, true AED, true APD) means
        out = []
        for a, b in pairs:
            m = face_metrics.evaluate(_up(frames[a]), _up(frames[b]), _up(frames[a]), cross=False, driver_key=f"f{b}")
            if np.isfinite(m["aed"]):  # not scored where dlib misses one of the two faces (a turned head)
                out.append((m["aed"], m["apd"], np.abs(code(a) - code(b)).mean(), np.abs(pose(a) - pose(b)).mean()))
        assert len(out) >= len(pairs) - 1, f"only {len(out)} of {len(pairs)} pairs scored"
        return np.mean(out, axis=0)

    # the tracker-based estimates are noisy per frame; neighbouring frames vs frames 12 apart (0.5 s of
    # talking and head motion) must still separate clearly
    near = measure([(k, k + 1) for k in (0, 6, 12, 18, 24)])
    far = measure([(k, k + 12) for k in (0, 4, 8, 12, 16)])
    assert far[2] > 3 * near[2] and far[3] > 3 * near[3]  # the ground truth differs as intended
    assert far[0] > 1.5 * near[0], (near, far)
    assert far[1] > 2 * near[1], (near, far)


# ----------------------------------------------------------------------------- ArcFace through onnxruntime


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def tiny_embedding_onnx() -> bytes:
    """A valid ONNX model written by hand (no onnx package needed): input [N,3,112,112] →
    ReduceMean over H, W → "embedding" [N,3]. Field numbers from onnx.proto."""
    dim = lambda v: _pb(1, _pb(1, v) if isinstance(v, int) else _pb(2, v))
    value_info = lambda name, dims: _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + _pb(2, b"".join(dim(d) for d in dims))))
    axes = _pb(1, "axes") + _pb(8, 2) + _pb(8, 3) + _pb(20, 7)  # INTS
    keepdims = _pb(1, "keepdims") + _pb(3, 0) + _pb(20, 2)  # INT
    node = _pb(1, "input") + _pb(2, "embedding") + _pb(4, "ReduceMean") + _pb(5, axes) + _pb(5, keepdims)
    graph = _pb(1, node) + _pb(2, "g") + _pb(11, value_info("input", ["N", 3, 112, 112])) \
        + _pb(12, value_info("embedding", ["N", 3]))
    return _pb(1, 8) + _pb(8, _pb(1, "") + _pb(2, 13)) + _pb(7, graph)


def test_arcface_onnx_identity_runs_through_onnxruntime(tmp_path, analyzer):
    pytest.importorskip("onnxruntime")
    from pipeline.eval.metrics.identity import ArcFaceOnnx, build_identity, cosine_similarity

    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_embedding_onnx())
    encoder = build_identity(str(path), analyzer)
    assert isinstance(encoder, ArcFaceOnnx) and encoder.size == 112 and "tiny.onnx" in encoder.name
    img = astronaut()
    lmk = analyzer.landmarks(img, analyzer.detect(img))
    e = encoder.embed(_t(img), lmk)
    assert e.shape == (3,) and cosine_similarity(e, e) == pytest.approx(1.0)
    crop = arcface_crop(_t(img), five_points(lmk), 112)
    assert np.allclose(e, ((crop * 255 - 127.5) / 127.5).mean(dim=(1, 2)).numpy(), atol=1e-4)
    tinted = _t(img) * torch.tensor([1.0, 0.3, 0.3])[:, None, None]
    assert cosine_similarity(encoder.embed(tinted, lmk), e) < 0.99
    with pytest.raises(FileNotFoundError, match="no such file"):
        ArcFaceOnnx(tmp_path / "missing.onnx")
