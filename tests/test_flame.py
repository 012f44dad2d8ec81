import pickle
import sys
import types

import numpy as np
import pytest
import torch

from model.flame import FlameModel
from model.flame_assets import (
    FlameAssetError,
    UnsafePickleError,
    load_flame_assets,
    load_flame_pickle,
    restricted_load,
)
from model.procedural_head import NUM_VERTICES, generate_head, generated_head_dir


def test_zero_parameters_give_the_template(flame, head_assets):
    out = flame(torch.zeros(2, 300))
    template = torch.from_numpy(head_assets.v_template) * 5.0
    assert out.vertices.shape == (2, NUM_VERTICES, 3) and out.landmarks.shape == (2, 70, 3)
    assert torch.allclose(out.vertices, template.expand(2, -1, -1), atol=1e-6)


def _slow_lbs(assets, shape, expression, full_pose):
    """Per-vertex numpy reference: blend shapes, pose correctives, forward kinematics, skinning."""
    from scipy.spatial.transform import Rotation

    betas = np.concatenate([shape, expression])
    dirs = np.concatenate([assets.shapedirs[:, :, :300], assets.shapedirs[:, :, 300:400]], 2).astype(np.float64)
    v_shaped = assets.v_template + dirs @ betas
    joints = assets.j_regressor.astype(np.float64) @ v_shaped
    rots = [Rotation.from_rotvec(full_pose[3 * i:3 * i + 3]).as_matrix() for i in range(5)]
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    world = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        parent = assets.parents[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    out = np.zeros_like(v_shaped)
    for v in range(len(v_shaped)):
        p = v_shaped[v] + assets.posedirs[v].astype(np.float64) @ feature
        m = np.zeros((4, 4))
        for j in range(5):
            skin = world[j].copy()
            skin[:3, 3] -= world[j][:3, :3] @ joints[j]
            m += assets.lbs_weights[v, j] * skin
        out[v] = m[:3, :3] @ p + m[:3, 3]
    return out


def test_lbs_matches_a_slow_per_vertex_reference(flame, head_assets):
    rng = np.random.default_rng(3)
    shape, expression = rng.normal(0, 1, 300), rng.normal(0, 1, 100)
    pose6, eyes, neck = rng.normal(0, 0.2, 6), rng.normal(0, 0.2, 6), rng.normal(0, 0.1, 3)
    full = np.concatenate([pose6[:3], neck, pose6[3:], eyes])
    ref = _slow_lbs(head_assets, shape, expression, full) * 5.0
    t = lambda a: torch.tensor(a, dtype=torch.float32)[None]
    out = flame(t(shape), t(expression), t(pose6), t(eyes), t(neck))
    assert np.abs(out.vertices[0].double().numpy() - ref).max() < 1e-5


def test_landmarks_follow_the_mesh_under_jaw_rotation(flame, head_assets):
    pose = torch.zeros(1, 6)
    pose[0, 3] = 0.3  # open the jaw
    closed, opened = flame(torch.zeros(1, 300)), flame(torch.zeros(1, 300), pose=pose)
    # landmarks are the embedding applied to the posed mesh ...
    faces = torch.from_numpy(head_assets.faces[head_assets.landmark_faces])
    bary = torch.from_numpy(head_assets.landmark_barycentric)
    expected = (opened.vertices[0][faces] * bary[..., None]).sum(1)
    assert torch.allclose(opened.landmarks[0], expected, atol=1e-6)
    # ... so the chin and lower lip go down, the brows and the eyes stay
    move = opened.landmarks[0] - closed.landmarks[0]
    assert move[8, 1] < -0.05 and move[57, 1] < -0.03
    assert move[17:27].norm(dim=-1).max() < 1e-6 and move[36:48].norm(dim=-1).max() < 1e-6


def test_eye_pose_turns_only_the_eyeballs(flame):
    eyes = torch.zeros(1, 6)
    eyes[0, 1] = eyes[0, 4] = 0.4  # both eyes look sideways
    rest, turned = flame(torch.zeros(1, 300)), flame(torch.zeros(1, 300), eyes=eyes)
    moved = (turned.vertices - rest.vertices).norm(dim=-1)[0] > 1e-6
    assert moved.sum() >= 190 and not moved[:-202].any()  # (the few vertices on the axis stay)
    assert (turned.landmarks[0, 68:] - rest.landmarks[0, 68:]).norm(dim=-1).min() > 0.02  # pupils


def test_both_file_formats_load_to_the_same_model(tmp_path):
    folder = generated_head_dir(tmp_path)
    a, b = load_flame_assets(folder / "FLAME_with_eye.pt"), load_flame_assets(folder / "generic_model.pkl")
    for name in ("faces", "v_template", "shapedirs", "posedirs", "j_regressor", "lbs_weights", "landmark_faces", "landmark_barycentric", "parents"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_generated_head_is_deterministic_and_closed():
    a, b = generate_head(0), generate_head(0)
    assert np.array_equal(a.shapedirs, b.shapedirs) and np.array_equal(a.faces, b.faces)
    assert not np.array_equal(a.shapedirs, generate_head(1).shapedirs)
    assert a.v_template.shape == (NUM_VERTICES, 3)
    edges = np.sort(np.concatenate([a.faces[:, [0, 1]], a.faces[:, [1, 2]], a.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # every edge shared by exactly two triangles: closed surfaces


# ---- the chumpy-free pickle loader ----------------------------------------------------------------


class _FakeChumpyModule:
    """Installs modules named like chumpy's (chumpy.ch.Ch) and scipy's old path while pickling."""

    def __enter__(self):
        ch_mod = types.ModuleType("chumpy.ch")

        class Ch:  # what chumpy pickles: an object whose state holds the array in 'x'
            def __init__(self, x):
                self.x = x
                self._dirty_vars = set()

        Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
        ch_mod.Ch = Ch
        self.saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
        sys.modules["chumpy"] = types.ModuleType("chumpy")
        sys.modules["chumpy.ch"] = ch_mod
        return Ch

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _flame2020_like_pickle(assets, path):
    from scipy import sparse

    with _FakeChumpyModule() as Ch:
        kintree = np.stack([assets.parents, np.arange(5)]).astype(np.int64)
        kintree[0, 0] = 4294967295
        data = {
            "f": assets.faces.astype(np.uint32),
            "v_template": Ch(assets.v_template.astype(np.float64)),
            "shapedirs": Ch(assets.shapedirs.astype(np.float64)),
            "posedirs": Ch(assets.posedirs.astype(np.float64)),
            "J_regressor": sparse.csc_matrix(assets.j_regressor.astype(np.float64)),
            "weights": Ch(assets.lbs_weights.astype(np.float64)),
            "kintree_table": kintree,
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    assert "chumpy" not in sys.modules


def test_restricted_loader_reads_a_flame2020_structured_pickle(tmp_path, head_assets):
    folder = generated_head_dir(tmp_path)
    _flame2020_like_pickle(head_assets, tmp_path / "generic_model.pkl")
    loaded = load_flame_pickle(tmp_path / "generic_model.pkl", folder / "landmark_embedding.npy")
    assert np.allclose(loaded.shapedirs, head_assets.shapedirs)
    assert np.allclose(loaded.j_regressor, head_assets.j_regressor)
    assert np.array_equal(loaded.landmark_faces, head_assets.landmark_faces)
    model = FlameModel(loaded)
    assert torch.allclose(model(torch.zeros(1, 300)).vertices[0], torch.from_numpy(head_assets.v_template) * 5)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_loader_refuses_other_callables(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Exploit()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load posix.system|refusing to load os.system"):
        restricted_load(path)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"f": __import__("builtins").eval}, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to load .*eval"):
        restricted_load(evil)


def test_missing_or_wrong_file_says_what_is_needed(tmp_path):
    with pytest.raises(FlameAssetError, match="flame.is.tue.mpg.de"):
        load_flame_assets(tmp_path / "generic_model.pkl")
    bad = tmp_path / "FLAME_with_eye.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(FlameAssetError, match="FLAME_with_eye.pt"):
        load_flame_assets(bad)
    garbage = tmp_path / "x.pkl"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(FlameAssetError, match="cannot be read"):
        load_flame_assets(garbage)
