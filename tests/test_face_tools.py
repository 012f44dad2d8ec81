"""Without the ``faces`` extra (dlib and its model files), whatever needs face tools says so in
one line with the install command, and before doing any work: the evaluation before it reads the
checkpoint, the demo before it generates data or trains."""

from __future__ import annotations

import importlib.util

import pytest

from pipeline.config import load_config
from preprocessing.face_tools import FACES_EXTRA, FaceToolsMissing, require_face_tools


@pytest.fixture
def no_dlib(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))


def test_missing_face_tools_are_named_with_the_install_command(no_dlib):
    with pytest.raises(FaceToolsMissing) as err:
        require_face_tools("the face metrics")
    message = str(err.value)
    assert "the face metrics needs dlib" in message and FACES_EXTRA in message
    assert "face_recognition_models" not in message  # only what is missing
    assert "\n" not in message


def test_evaluation_refuses_before_it_reads_the_checkpoint(no_dlib, tmp_path):
    from pipeline.eval.run import run_evaluation

    with pytest.raises(FaceToolsMissing, match="gaga-eval"):  # not a missing-checkpoint error
        run_evaluation(load_config("smoke"), checkpoint=str(tmp_path / "no_such_run"), output=str(tmp_path / "eval"))
    assert not (tmp_path / "eval").exists()


def test_demo_refuses_before_it_generates_or_trains(no_dlib, tmp_path):
    from pipeline.demo import run_demo

    with pytest.raises(FaceToolsMissing, match="gaga-demo"):
        run_demo(load_config("smoke"), tmp_path / "demo", train_seconds=10)
    assert not (tmp_path / "demo").exists()


def test_real_video_detection_and_landmarks_refuse_without_dlib(no_dlib):
    from preprocessing.config import DetectionConfig
    from preprocessing.detection import DlibFaceDetector
    from preprocessing.landmarks import DlibLandmarkDetector

    with pytest.raises(FaceToolsMissing, match="face detection on real video"):
        DlibFaceDetector(DetectionConfig())
    with pytest.raises(FaceToolsMissing, match="dlib landmarks"):
        DlibLandmarkDetector()


def test_preprocessing_refuses_real_clips_before_it_starts_but_not_generated_ones(no_dlib):
    from pipeline.preprocess import ClipSpec, require_face_tools_for
    from preprocessing.config import PreprocessConfig

    generated = ClipSpec("synth000c00", "train", "video", "videos/synth000c00.mp4", sidecar="sidecars/synth000c00.npz")
    real = ClipSpec("interview", "train", "video", "videos/interview.mp4")
    require_face_tools_for(PreprocessConfig(detector="auto"), [generated])  # ground truth: no dlib needed
    with pytest.raises(FaceToolsMissing, match=r"1 real clip\(s\) \(e.g. interview"):
        require_face_tools_for(PreprocessConfig(detector="auto"), [generated, real])
    with pytest.raises(FaceToolsMissing, match="detector 'dlib'"):
        require_face_tools_for(PreprocessConfig(detector="dlib"), [generated])
