"""The paper's numbers, in one place (as read from the OCR'd poster, corrected by third-party
transcriptions of Table 1 where they disagree): Table 1 (VFHQ self/cross reenactment), the reenactment-speed table ("Table 2" of
the poster), Table 3 (ablations), and where the released code spends its time (docs/released_model.md).

Provenance: read from an OCR'd poster and successor papers' transcriptions, not from the PDF;
``None`` marks a cell that could not be read. The evaluation and sweep jobs print these beside
our numbers; nothing else restates them.
"""

from __future__ import annotations

from typing import Any

SOURCE = ("GAGAvatar (NeurIPS 2024) as read from the OCR'd poster, with the third-party "
          "transcriptions of Table 1 (LAM, OMG-Avatar, FlexAvatar, FFAvatar) where they disagree; unverified against the PDF")

# (key, column title, higher is better)
SELF_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("psnr", "PSNR↑", True), ("ssim", "SSIM↑", True), ("lpips", "LPIPS↓", False), ("csim", "CSIM↑", True),
    ("aed", "AED↓", False), ("apd", "APD↓", False), ("akd", "AKD↓", False),
)
CROSS_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("csim", "CSIM↑", True), ("aed", "AED↓", False), ("apd", "APD↓", False),
)
TABLE_KEYS = tuple(f"self_{k}" for k, _, _ in SELF_COLUMNS) + tuple(f"cross_{k}" for k, _, _ in CROSS_COLUMNS)


def _row(*values: float | None) -> dict[str, float | None]:
    return dict(zip(TABLE_KEYS, values, strict=True))


# Table 1 (VFHQ): self PSNR SSIM LPIPS CSIM AED APD AKD | cross CSIM AED APD
TABLE1: dict[str, dict[str, float | None]] = {
    "StyleHeat": _row(19.95, 0.726, 0.211, 0.537, 0.199, 0.385, 7.659, 0.407, 0.279, 0.551),
    "ROME": _row(19.96, 0.786, 0.192, 0.701, 0.138, 0.186, 4.986, 0.530, 0.259, 0.277),
    "OTAvatar": _row(17.65, 0.563, 0.294, 0.465, 0.234, 0.545, 18.19, 0.364, 0.324, 0.678),
    "HideNeRF": _row(19.79, 0.768, 0.180, 0.787, 0.143, 0.361, 7.254, 0.514, 0.277, 0.527),
    "GOHA": _row(20.15, 0.770, 0.149, 0.664, 0.176, None, 6.272, 0.518, 0.274, 0.261),
    "CVTHead": _row(18.43, 0.706, 0.317, 0.504, 0.186, 0.224, 5.678, 0.374, 0.261, 0.311),
    "GPAvatar": _row(21.04, 0.807, 0.150, 0.772, 0.132, 0.189, 4.226, 0.564, None, 0.328),
    # CSIM 0.750: FFAvatar's transcription (§4.3); the poster cell is unreadable
    "Real3DPortrait": _row(20.88, 0.780, 0.154, 0.750, 0.150, 0.268, 5.971, None, 0.296, 0.411),
    "Portrait4D": _row(20.35, 0.741, 0.191, 0.765, 0.144, 0.205, 4.854, 0.596, 0.286, 0.258),
    "Portrait4D-v2": _row(21.34, 0.791, 0.144, 0.803, 0.117, 0.187, 3.749, None, 0.268, 0.273),
    "GAGAvatar": _row(21.83, 0.818, 0.122, 0.816, 0.111, 0.135, 3.349, 0.633, 0.253, 0.247),
}
PAPER_METHOD = "GAGAvatar"

# Reenactment speed (the poster's "Table 2"): FPS with driving parameters precomputed, averaged over
# 100 frames; third-party copies name an A100 for GAGAvatar
TABLE2_FPS: dict[str, float] = {
    "StyleHeat": 19.82, "ROME": 11.21, "OTAvatar": 0.12, "HideNeRF": 9.73, "GOHA": 6.57, "CVTHead": 18.09,
    "GPAvatar": 16.86, "Real3DPortrait": 4.55, "Portrait4D": 9.49, "Portrait4D-v2": 9.62, "GAGAvatar": 67.12,
}
TABLE2_GPU = "A100 (third-party copies; unverified)"

# Table 3 (ablations, VFHQ), same columns as Table 1. The names of rows 2 and 4 are OCR guesses
# (the poster's OCR reads "w/o F_?" and "w/ L_lifting"); the keys are the cell names of the table3 sweep spec,
# which holds each cell's config switches.
TABLE3: dict[str, dict[str, Any]] = {
    "one_plane": {"name": "one-plane lifting",
                  **_row(21.34, 0.802, 0.158, 0.781, 0.127, 0.170, 3.810, 0.581, 0.272, 0.290)},
    "no_global_feature": {"name": "w/o global feature",
                          **_row(21.13, 0.807, 0.155, 0.774, 0.125, 0.155, 3.722, 0.537, 0.270, 0.272)},
    "no_neural_renderer": {"name": "w/o neural renderer",
                           **_row(20.34, 0.789, 0.138, 0.788, 0.147, 0.202, 4.763, 0.623, 0.300, 0.353)},
    "no_lifting_loss": {"name": "w/o lifting loss",
                        **_row(21.64, 0.812, 0.148, 0.800, 0.119, 0.151, 3.563, 0.620, 0.261, 0.252)},
    "full": {"name": "full model",
             **_row(21.83, 0.818, 0.122, 0.816, 0.111, 0.135, 3.349, 0.633, 0.253, 0.247)},
}

# The released code on an H100 (docs/released_model.md: fp32 + TF32, random weights, batch 1, 512²)
RELEASED_H100: dict[str, float] = {
    "reenact_fps": 52.5,  # FLAME on the GPU per frame
    "reenact_fps_model_only": 59.1,  # FLAME vertices precomputed
    "frame_ms": 19.1,
    "style_unet_ms": 16.7,  # 78% of a frame
    "rasterizer_ms": 2.3,
    "flame_ms": 2.2,
    "reconstruction_ms": 15.7,
}


def table1_rows() -> list[tuple[str, dict[str, float | None]]]:
    """(method, {self_*/cross_* → value}) in the paper's order."""
    return list(TABLE1.items())


def column_titles() -> list[str]:
    return [f"self {t}" for _, t, _ in SELF_COLUMNS] + [f"cross {t}" for _, t, _ in CROSS_COLUMNS]
