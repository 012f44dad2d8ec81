"""FLAME as a differentiable layer: linear blend skinning with shape, expression, pose correctives,
global/neck/jaw/eye joints, GAGAvatar's ×5 scale, and 68 + 2 landmarks through the embedding.

Parameters follow the GAGAvatar tracker (docs/released_model.md, 'Constants'): ``shape`` [B,300], ``expression`` [B,100],
``pose`` [B,6] = global rotation (3, zero in tracker output) + jaw (3), ``eyes`` [B,6] (two
eyeball axis-angles). Neck pose is fixed to zero unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import FlameConfig
from .flame_assets import FlameAssets, load_flame_assets
from .geometry import axis_angle_to_matrix


@dataclass
class FlameOutput:
    vertices: torch.Tensor  # [B, V, 3], ×scale
    landmarks: torch.Tensor  # [B, 70, 3], ×scale
    joints: torch.Tensor  # [B, J, 3] posed joints, ×scale


def rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics. rot_mats [B,J,3,3] local rotations, joints [B,J,3] rest positions.
    Returns posed joints [B,J,3] and the relative transforms [B,J,4,4] that map rest-pose points
    to posed points (the skinning matrices)."""
    b, j = joints.shape[:2]
    # parents by integer indexing (views): a Python-list index would be a host→device copy
    parent_joints = torch.stack([torch.zeros_like(joints[:, 0])] + [joints[:, p] for p in parents[1:]], dim=1)
    rel = joints - parent_joints
    local = torch.zeros(b, j, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(chain[parents[i]] @ local[:, i])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    # subtract the rest-pose joint so the transform applies to rest-pose vertices
    offset = (world[..., :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)
    skin = world.clone()
    skin[..., :3, 3] = posed_joints - offset
    return posed_joints, skin


class FlameModel(nn.Module):
    """FLAME layer. All arrays are non-persistent buffers: a checkpoint of a network that owns a
    FlameModel does not carry the licensed FLAME data."""

    def __init__(self, assets: FlameAssets, n_shape: int = 300, n_expression: int = 100, scale: float = 5.0) -> None:
        super().__init__()
        if assets.shapedirs.shape[2] < assets.n_shape_total + n_expression or n_shape > assets.n_shape_total:
            raise ValueError(
                f"FLAME model has {assets.shapedirs.shape[2]} blend shapes; need {n_shape} shape "
                f"(of {assets.n_shape_total}) + {n_expression} expression"
            )
        self.scale = scale
        self.n_shape, self.n_expression = n_shape, n_expression
        self.parents = [int(p) for p in assets.parents]
        dirs = np.concatenate(
            [assets.shapedirs[:, :, :n_shape], assets.shapedirs[:, :, assets.n_shape_total:assets.n_shape_total + n_expression]],
            axis=2,
        )
        n_pose = assets.posedirs.shape[2]
        buffers = {
            "faces": torch.from_numpy(assets.faces.astype(np.int64)),
            "v_template": torch.from_numpy(assets.v_template.astype(np.float32)),
            "shapedirs": torch.from_numpy(dirs.astype(np.float32)),
            # [P, V*3] so that pose_feature @ posedirs gives per-vertex offsets
            "posedirs": torch.from_numpy(assets.posedirs.reshape(-1, n_pose).T.astype(np.float32).copy()),
            "j_regressor": torch.from_numpy(assets.j_regressor.astype(np.float32)),
            "lbs_weights": torch.from_numpy(assets.lbs_weights.astype(np.float32)),
            "landmark_vertex_ids": torch.from_numpy(assets.faces[assets.landmark_faces].astype(np.int64)),
            "landmark_barycentric": torch.from_numpy(assets.landmark_barycentric.astype(np.float32)),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_config(cls, config: FlameConfig, cache_dir: str | Path | None = None) -> FlameModel:
        """The FLAME file named in config, or the generated stand-in head when ``path`` is None."""
        if config.path:
            assets = load_flame_assets(config.path, config.landmark_embedding)
        else:
            from .procedural_head import load_generated_head

            assets = load_generated_head(cache_dir)
        return cls(assets, config.n_shape, config.n_expression, config.scale)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def forward(
        self,
        shape: torch.Tensor,
        expression: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        eyes: torch.Tensor | None = None,
        neck: torch.Tensor | None = None,
    ) -> FlameOutput:
        """shape [B,n_shape], expression [B,n_expression], pose [B,6] (global, jaw), eyes [B,6],
        neck [B,3]; missing ones are zero. Returns vertices/landmarks/joints ×scale."""
        # geometry: always float32, also under autocast (bf16 would move vertices by pixels)
        with torch.autocast(device_type=self.v_template.device.type, enabled=False):
            return self._forward(shape, expression, pose, eyes, neck)

    def _forward(self, shape: torch.Tensor, expression: torch.Tensor | None, pose: torch.Tensor | None,
                 eyes: torch.Tensor | None, neck: torch.Tensor | None) -> FlameOutput:
        b = shape.shape[0]
        dtype, device = self.v_template.dtype, self.v_template.device
        zeros = lambda n: torch.zeros(b, n, dtype=dtype, device=device)
        expression = zeros(self.n_expression) if expression is None else expression
        pose = zeros(6) if pose is None else pose
        eyes = zeros(6) if eyes is None else eyes
        neck = zeros(3) if neck is None else neck
        betas = torch.cat([shape.to(dtype), expression.to(dtype)], dim=1)
        full_pose = torch.cat([pose[:, :3], neck, pose[:, 3:], eyes], dim=1).to(dtype)  # [B,15]

        v_shaped = self.v_template + torch.einsum("bk,vck->bvc", betas, self.shapedirs)
        rest_joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)
        rot_mats = axis_angle_to_matrix(full_pose.view(b, -1, 3))
        eye3 = torch.eye(3, dtype=dtype, device=device)
        pose_feature = (rot_mats[:, 1:] - eye3).reshape(b, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(b, -1, 3)
        joints, skin = rigid_transforms(rot_mats, rest_joints, self.parents)
        blend = torch.einsum("vj,bjxy->bvxy", self.lbs_weights, skin)  # [B,V,4,4]
        vertices = (blend[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + blend[..., :3, 3]
        landmarks = self.landmarks_from_vertices(vertices)
        return FlameOutput(vertices * self.scale, landmarks * self.scale, joints * self.scale)

    def landmarks_from_vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        """[B,V,3] → [B,L,3] via the barycentric landmark embedding."""
        tri = vertices[:, self.landmark_vertex_ids]  # [B,L,3 corners,3]
        return (tri * self.landmark_barycentric[None, :, :, None]).sum(2)
