"""The generated mini-VFHQ: talking stand-in heads as real H.264 clips with FLAME ground truth.

VFHQ cannot be downloaded and FLAME needs a licence, so the demo and the tests use this instead:
identities (FLAME shape code + colours and procedural texture) × clips (talking motion, head
pose as camera motion, blinks, gaze) rendered with a small z-buffer rasterizer, encoded
deterministically, with a per-clip ground-truth sidecar (``preprocessing.sidecar``). No Ray.

Entry points: :func:`ensure_dataset` (cached), :func:`generate_dataset`, :func:`generate_clip`,
:func:`render_frame`, :func:`make_contact_sheet`; the CLI is ``gaga-generate``
(``jobs/generate_data.py``). See docs/synthetic.md.
"""

from .appearance import Appearance, sample_appearance
from .contact_sheet import make_contact_sheet
from .dataset import (
    FLAME_NOTE,
    GENERATOR_VERSION,
    ClipRender,
    Identity,
    camera_distance,
    clip_id,
    dataset_key,
    default_dataset_root,
    ensure_dataset,
    generate_clip,
    generate_dataset,
    is_generated,
    load_manifest,
    painted_head,
    sample_identity,
)
from .motion import ClipMotion, MotionLimits, sample_motion
from .raster import Fragments, rasterize, silhouette
from .render import Lighting, PaintedHead, paint_head, render_frame
from .video import read_video, write_video

__all__ = [
    "FLAME_NOTE",
    "GENERATOR_VERSION",
    "Appearance",
    "ClipMotion",
    "ClipRender",
    "Fragments",
    "Identity",
    "Lighting",
    "MotionLimits",
    "PaintedHead",
    "camera_distance",
    "clip_id",
    "dataset_key",
    "default_dataset_root",
    "ensure_dataset",
    "generate_clip",
    "generate_dataset",
    "is_generated",
    "load_manifest",
    "make_contact_sheet",
    "paint_head",
    "painted_head",
    "rasterize",
    "read_video",
    "render_frame",
    "sample_appearance",
    "sample_identity",
    "sample_motion",
    "silhouette",
    "write_video",
]
