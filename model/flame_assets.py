"""Reading the FLAME head model from the files people actually have, without chumpy.

Two layouts are accepted (docs/released_model.md):
- ``generic_model.pkl`` of FLAME 2020: a Python-2 pickle whose arrays are partly ``chumpy.ch.Ch``
  objects and whose joint regressor is a ``scipy.sparse`` matrix. chumpy no longer imports on
  current numpy, so the pickle is read with a restricted unpickler that knows only the handful of
  classes such a file contains and refuses every other callable. Its landmark embedding comes from
  a separate file (DECA's ``landmark_embedding.npy``, same unpickler) or a ``FLAME_with_eye.pt``.
- ``FLAME_with_eye.pt`` as GAGAvatar ships it: ``{"flame_model": {...}, "lmk_embeddings": {...}}``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FLAME_HELP = (
    "FLAME needs a licence and cannot be shipped: register at https://flame.is.tue.mpg.de to get "
    "FLAME 2020 (generic_model.pkl), or accept the licence of https://huggingface.co/xg-chu/GAGAvatar "
    "for GAGAvatar's assets/FLAME_with_eye.pt, and pass its path as flame.path. "
    "Leave flame.path empty to use the project's generated stand-in head."
)


class FlameAssetError(RuntimeError):
    """A FLAME file is missing or is not what it claims to be."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a callable that a FLAME file never contains."""


@dataclass
class FlameAssets:
    """Arrays of a FLAME-topology head model (float32/int64 numpy, model units = metres).

    faces [F,3]; v_template [V,3]; shapedirs [V,3,n_shape+n_expression] (shape first, then
    expression, as FLAME 2020's 300+100); posedirs [V,3,9·(J-1)]; j_regressor [J,V];
    parents [J] (root −1); lbs_weights [V,J]; landmark_faces [L]; landmark_barycentric [L,3]
    (68 iBUG landmarks followed by the two pupils).
    """

    faces: np.ndarray
    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    parents: np.ndarray
    lbs_weights: np.ndarray
    landmark_faces: np.ndarray
    landmark_barycentric: np.ndarray
    n_shape_total: int = 300

    def validate(self, source: str) -> None:
        v = self.v_template.shape[0]
        j = self.j_regressor.shape[0]
        checks = [
            (self.v_template.ndim == 2 and self.v_template.shape[1] == 3, f"v_template {self.v_template.shape}"),
            (self.faces.ndim == 2 and self.faces.shape[1] == 3 and self.faces.max() < v, f"faces {self.faces.shape}"),
            (self.shapedirs.shape[:2] == (v, 3), f"shapedirs {self.shapedirs.shape}"),
            (self.posedirs.shape[:2] == (v, 3) and self.posedirs.shape[2] == 9 * (j - 1), f"posedirs {self.posedirs.shape}"),
            (self.j_regressor.shape == (j, v), f"J_regressor {self.j_regressor.shape}"),
            (self.lbs_weights.shape == (v, j), f"weights {self.lbs_weights.shape}"),
            (self.parents.shape == (j,) and self.parents[0] == -1, f"kintree parents {self.parents}"),
            (self.landmark_faces.shape[0] == self.landmark_barycentric.shape[0], "landmark embedding sizes"),
        ]
        bad = [what for ok, what in checks if not ok]
        if bad:
            raise FlameAssetError(f"{source}: not a FLAME model (inconsistent {', '.join(bad)}). {FLAME_HELP}")


# ----------------------------------------------------------------------------- restricted unpickler


class _ChumpyStandIn:
    """Takes the place of ``chumpy.ch.Ch`` (and its subclasses): keeps the pickled state; the
    array value of a leaf Ch lives in its ``x`` entry."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise FlameAssetError("a chumpy object in the pickle has no array value ('x')")


class _SparseStandIn:
    """Takes the place of ``scipy.sparse`` csc/csr matrices: rebuilds a dense array from the
    pickled ``data``/``indices``/``indptr``/``_shape`` without importing scipy's classes."""

    kind = "csc"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        data, indices, indptr = np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])
        dense = np.zeros(shape, dtype=np.float64)
        major = shape[1] if self.kind == "csc" else shape[0]
        for m in range(major):
            rows = indices[indptr[m]:indptr[m + 1]]
            vals = data[indptr[m]:indptr[m + 1]]
            if self.kind == "csc":
                dense[rows, m] = vals
            else:
                dense[m, rows] = vals
        return dense


class _CsrStandIn(_SparseStandIn):
    kind = "csr"


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor would call base.__init__; only our stand-ins and object reach here.
    if base is not object:
        raise UnsafePickleError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return cls.__new__(cls)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1")
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy ≥ 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    return scalar


_ALLOWED: dict[tuple[str, str], Any] = {
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,  # chumpy keeps bookkeeping sets in its state
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
    ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    ("chumpy.ch", "Ch"): _ChumpyStandIn,
    ("chumpy.reordering", "Select"): _ChumpyStandIn,
    ("chumpy.reordering", "transpose"): _ChumpyStandIn,
    ("chumpy.ch_ops", "add"): _ChumpyStandIn,
    ("chumpy.ch_ops", "multiply"): _ChumpyStandIn,
    ("scipy.sparse.csc", "csc_matrix"): _SparseStandIn,
    ("scipy.sparse._csc", "csc_matrix"): _SparseStandIn,
    ("scipy.sparse", "csc_matrix"): _SparseStandIn,
    ("scipy.sparse.csr", "csr_matrix"): _CsrStandIn,
    ("scipy.sparse._csr", "csr_matrix"): _CsrStandIn,
    ("scipy.sparse", "csr_matrix"): _CsrStandIn,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for FLAME files: numpy arrays, chumpy/scipy stand-ins, nothing else."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")  # FLAME 2020 is a Python-2 pickle
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load {module}.{name} — a FLAME file holds only arrays "
                f"(numpy, chumpy, scipy.sparse); this pickle asks for another callable"
            )
        return allowed


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` (a .pkl, or the object payload of an .npy) with :class:`RestrictedUnpickler`."""
    path = Path(path)
    with path.open("rb") as fh:
        if path.suffix == ".npy":
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(fh)
            if dtype != np.dtype(object):
                fh.seek(0)
                return np.load(fh, allow_pickle=False)
            obj = RestrictedUnpickler(fh, str(path)).load()
            return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
        return RestrictedUnpickler(fh, str(path)).load()


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "to_array"):
        return value.to_array()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------- loaders


def _parents_from_kintree(kintree: np.ndarray) -> np.ndarray:
    parents = np.asarray(kintree[0]).astype(np.int64)
    parents[0] = -1  # FLAME stores the root's parent as uint32 max
    return parents


def _pupil_vertices(v_template: np.ndarray, lbs_weights: np.ndarray) -> list[int]:
    """Front-most (+z) vertex of each eyeball: FLAME's eyeballs are the vertices bound to the
    two eye joints (3 and 4)."""
    owner = lbs_weights.argmax(1)
    return [int(np.flatnonzero(owner == j)[v_template[owner == j][:, 2].argmax()]) for j in (3, 4)]


def _pupil_embedding(faces: np.ndarray, vertex_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    idx, bary = [], []
    for v in vertex_ids:
        face = int(np.flatnonzero((faces == v).any(1))[0])
        weights = (faces[face] == v).astype(np.float32)
        idx.append(face)
        bary.append(weights)
    return np.asarray(idx, np.int64), np.asarray(bary, np.float32)


def _landmarks_from_dict(emb: dict[str, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    for faces_key, bary_key in (
        ("full_lmk_faces_idx_with_eye", "full_lmk_bary_coords_with_eye"),
        ("full_lmk_faces_idx", "full_lmk_bary_coords"),
    ):
        if faces_key in emb:
            faces = _as_array(emb[faces_key]).reshape(-1).astype(np.int64)
            bary = _as_array(emb[bary_key]).reshape(-1, 3).astype(np.float32)
            return faces, bary
    raise FlameAssetError(f"{source}: no full landmark embedding (keys: {sorted(emb)})")


def load_flame_pickle(path: str | Path, landmark_embedding: str | Path | None = None) -> FlameAssets:
    """FLAME 2020 ``generic_model.pkl`` (chumpy-free) + a landmark embedding file."""
    path = Path(path)
    try:
        raw = restricted_load(path)
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise FlameAssetError(f"{path}: cannot be read as FLAME generic_model.pkl ({exc}). {FLAME_HELP}") from exc
    if not isinstance(raw, dict) or not {"v_template", "f", "shapedirs", "J_regressor"} <= set(raw):
        raise FlameAssetError(f"{path}: not a FLAME generic_model.pkl (keys: {sorted(raw) if isinstance(raw, dict) else type(raw)}). {FLAME_HELP}")
    faces = _as_array(raw["f"]).astype(np.int64)
    v_template = _as_array(raw["v_template"]).astype(np.float32)
    lbs_weights = _as_array(raw["weights"]).astype(np.float32)
    if landmark_embedding is None:
        sibling = path.with_name("landmark_embedding.npy")
        if not sibling.is_file():
            raise FlameAssetError(
                f"{path}: FLAME's pickle has no landmark embedding; put DECA's landmark_embedding.npy "
                f"next to it ({sibling}) or set flame.landmark_embedding"
            )
        landmark_embedding = sibling
    lmk_faces, lmk_bary = load_landmark_embedding(landmark_embedding)
    if lmk_faces.shape[0] == 68:  # DECA's 68: add the pupils as GAGAvatar's 70-point layout does
        p_faces, p_bary = _pupil_embedding(faces, _pupil_vertices(v_template, lbs_weights))
        lmk_faces, lmk_bary = np.concatenate([lmk_faces, p_faces]), np.concatenate([lmk_bary, p_bary])
    shapedirs = _as_array(raw["shapedirs"]).astype(np.float32)
    assets = FlameAssets(
        faces=faces,
        v_template=v_template,
        shapedirs=shapedirs,
        posedirs=_as_array(raw["posedirs"]).astype(np.float32),
        j_regressor=_as_array(raw["J_regressor"]).astype(np.float32),
        parents=_parents_from_kintree(_as_array(raw["kintree_table"])),
        lbs_weights=lbs_weights,
        landmark_faces=lmk_faces,
        landmark_barycentric=lmk_bary,
        n_shape_total=min(300, shapedirs.shape[2]),
    )
    assets.validate(str(path))
    return assets


def load_landmark_embedding(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Landmark faces [L] and barycentric coordinates [L,3] from DECA's ``landmark_embedding.npy``
    or the ``lmk_embeddings`` of a ``FLAME_with_eye.pt``."""
    path = Path(path)
    if not path.is_file():
        raise FlameAssetError(f"landmark embedding {path} not found. {FLAME_HELP}")
    if path.suffix == ".pt":
        return _landmarks_from_dict(_torch_load(path)["lmk_embeddings"], str(path))
    emb = restricted_load(path)
    if not isinstance(emb, dict):
        raise FlameAssetError(f"{path}: expected a dict of landmark arrays, got {type(emb).__name__}")
    return _landmarks_from_dict(emb, str(path))


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FlameAssetError(f"{path}: cannot be read as GAGAvatar's FLAME_with_eye.pt ({exc}). {FLAME_HELP}") from exc
    if not isinstance(data, dict) or "flame_model" not in data or "lmk_embeddings" not in data:
        raise FlameAssetError(
            f"{path}: not GAGAvatar's FLAME_with_eye.pt (expected keys 'flame_model' and 'lmk_embeddings'). {FLAME_HELP}"
        )
    return data


def load_flame_with_eye(path: str | Path) -> FlameAssets:
    """GAGAvatar's ``FLAME_with_eye.pt``."""
    path = Path(path)
    data = _torch_load(path)
    fm = data["flame_model"]
    lmk_faces, lmk_bary = _landmarks_from_dict(data["lmk_embeddings"], str(path))
    shapedirs = _as_array(fm["shapedirs"]).astype(np.float32)
    assets = FlameAssets(
        faces=_as_array(fm["f"]).astype(np.int64),
        v_template=_as_array(fm["v_template"]).astype(np.float32),
        shapedirs=shapedirs,
        posedirs=_as_array(fm["posedirs"]).astype(np.float32),
        j_regressor=_as_array(fm["J_regressor"]).astype(np.float32),
        parents=_parents_from_kintree(_as_array(fm["kintree_table"])),
        lbs_weights=_as_array(fm["weights"]).astype(np.float32),
        landmark_faces=lmk_faces,
        landmark_barycentric=lmk_bary,
        n_shape_total=min(300, shapedirs.shape[2]),
    )
    assets.validate(str(path))
    return assets


def load_flame_assets(path: str | Path, landmark_embedding: str | Path | None = None) -> FlameAssets:
    """Dispatch on the file: ``.pkl`` → FLAME 2020, ``.pt`` → GAGAvatar's FLAME_with_eye."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FlameAssetError(f"FLAME file {path} not found. {FLAME_HELP}")
    if path.suffix == ".pkl":
        return load_flame_pickle(path, landmark_embedding)
    if path.suffix == ".pt":
        return load_flame_with_eye(path)
    raise FlameAssetError(f"{path}: unknown FLAME file type (expected generic_model.pkl or FLAME_with_eye.pt). {FLAME_HELP}")


# ----------------------------------------------------------------------------- writers (same layouts)


def save_flame_with_eye(assets: FlameAssets, path: str | Path) -> None:
    """Write ``assets`` in GAGAvatar's ``FLAME_with_eye.pt`` layout."""
    kintree = np.stack([assets.parents, np.arange(len(assets.parents))]).astype(np.int64)
    kintree[0, 0] = -1
    data = {
        "flame_model": {
            "f": torch.from_numpy(assets.faces.astype(np.int64)),
            "v_template": torch.from_numpy(assets.v_template),
            "shapedirs": torch.from_numpy(assets.shapedirs),
            "posedirs": torch.from_numpy(assets.posedirs),
            "J_regressor": torch.from_numpy(assets.j_regressor),
            "kintree_table": torch.from_numpy(kintree),
            "weights": torch.from_numpy(assets.lbs_weights),
        },
        "lmk_embeddings": {
            "full_lmk_faces_idx_with_eye": torch.from_numpy(assets.landmark_faces[None].astype(np.int64)),
            "full_lmk_bary_coords_with_eye": torch.from_numpy(assets.landmark_barycentric[None]),
            # GAGAvatar's file also has static/dynamic contour embeddings; its model uses the full
            # 70-point embedding above, so the static one is the same subset here.
            "static_lmk_faces_idx": torch.from_numpy(assets.landmark_faces[17:68].astype(np.int64)),
            "static_lmk_bary_coords": torch.from_numpy(assets.landmark_barycentric[17:68]),
        },
    }
    torch.save(data, Path(path))


def save_flame_pickle(assets: FlameAssets, path: str | Path) -> None:
    """Write ``assets`` with FLAME 2020's pickle keys (plain numpy arrays and a scipy CSC
    J_regressor) plus DECA's ``landmark_embedding.npy`` beside it."""
    from scipy import sparse

    path = Path(path)
    kintree = np.stack([assets.parents, np.arange(len(assets.parents))]).astype(np.int64)
    kintree[0, 0] = 4294967295  # as FLAME stores it
    data = {
        "f": assets.faces.astype(np.uint32),
        "v_template": assets.v_template.astype(np.float64),
        "shapedirs": assets.shapedirs.astype(np.float64),
        "posedirs": assets.posedirs.astype(np.float64),
        "J_regressor": sparse.csc_matrix(assets.j_regressor.astype(np.float64)),
        "weights": assets.lbs_weights.astype(np.float64),
        "kintree_table": kintree,
        "J": (assets.j_regressor @ assets.v_template).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    with path.open("wb") as fh:
        pickle.dump(data, fh, protocol=2)
    embedding = {
        "full_lmk_faces_idx": assets.landmark_faces[None, :68].astype(np.int64),
        "full_lmk_bary_coords": assets.landmark_barycentric[None, :68].astype(np.float64),
    }
    np.save(path.with_name("landmark_embedding.npy"), np.array(embedding, dtype=object), allow_pickle=True)
