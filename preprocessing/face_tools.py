"""The face tools of the ``faces`` extra (dlib and its model files): real-video detection and
landmarks in preprocessing, the face metrics of evaluation. A plain ``pip install .`` (what a
training-only node needs) leaves them out, so whatever needs them checks first and says, in one
line, what to install — not a bare ModuleNotFoundError minutes into a job."""

from __future__ import annotations

import importlib.util

FACES_EXTRA = 'pip install "gagavatar-ray[faces]" (in a source checkout: pip install ".[faces]")'
FACE_MODULES = ("dlib", "face_recognition_models")


class FaceToolsMissing(ModuleNotFoundError):
    pass


def require_face_tools(purpose: str) -> None:
    """Raise FaceToolsMissing naming ``purpose`` and the install command unless dlib and its
    model files are importable."""
    missing = [name for name in FACE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise FaceToolsMissing(f"{purpose} needs {' and '.join(missing)}, which a plain install leaves out "
                               f"(the 'faces' extra): {FACES_EXTRA}")
