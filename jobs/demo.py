"""`gaga-demo`: the main job end to end on the embedded default (local, generated assets, CPU).

For now: build FLAME from the generated stand-in head and run one forward/backward step of a
landmark fit. Later stages (generate → preprocess → train → evaluate) extend it as they land.
"""

from __future__ import annotations

import time

import torch

from jobs.common import config_parser, resolve_config, setup_logging
from model.flame import FlameModel
from model.geometry import intrinsics, look_at_transform, project_points, transform_to_viewmat


def main() -> None:
    setup_logging()
    args = config_parser(__doc__.splitlines()[0], default_preset="smoke").parse_args()
    cfg = resolve_config(args)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    flame = FlameModel.from_config(cfg.flame)
    expression = torch.zeros(1, cfg.flame.n_expression, requires_grad=True)
    out = flame(torch.zeros(1, cfg.flame.n_shape), expression)
    camera = look_at_transform(9.3)[None]
    size = cfg.camera.image_size
    landmarks_px = project_points(out.landmarks, camera, cfg.camera.focal, size, size)
    loss = (landmarks_px - landmarks_px.detach().mean(1, keepdim=True)).square().mean()
    loss.backward()
    _ = transform_to_viewmat(camera), intrinsics(cfg.camera.focal, size, size, (1,))
    print(
        f"demo [{cfg.name}] FLAME ({'generated stand-in head' if not cfg.flame.path else cfg.flame.path}): "
        f"{out.vertices.shape[1]} vertices, {out.landmarks.shape[1]} landmarks; one forward/backward step, "
        f"loss {loss.item():.3f}, |grad| {expression.grad.norm().item():.3f}, {time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
