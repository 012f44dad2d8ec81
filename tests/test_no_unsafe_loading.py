"""Nothing read from a file is ever executed: every loader in the project's code is a safe one.
Walks the syntax tree of every module (not the tests) and fails on a call that could run code
from data, a checkpoint or a config."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "preprocessing", "pipeline", "jobs", "bench")

# Loaders that run code by design, each with the reason it is allowed.
ALLOWED = {
    ("model/flame_assets.py", "RestrictedUnpickler"): "FLAME 2020 is a pickle: read by an unpickler whose "
    "find_class admits only numpy/chumpy/scipy stand-ins (tests/test_flame.py plants a payload)",
    ("preprocessing/matting.py", "torch.jit.load"): "the matting network the user names in preprocess.matting_model "
    "is a program they chose to run, like any model architecture",
    ("preprocessing/matting.py", "torch.export.load"): "the same, in torch.export's format",
    ("bench/_compile_cache.py", "torch.compiler.load_cache_artifacts"): "bench.train measures a compile cache it "
    "wrote itself a minute earlier, in its own temporary folder; training never restores one",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
    return None


def _problems(path: Path, rel: str | None = None) -> list[str]:
    rel = rel or path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(), str(path))
    allowed_classes = {cls for (file, cls) in ALLOWED if file == rel}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_name(b).endswith("Unpickler") for b in node.bases):
            if node.name not in allowed_classes:
                problems.append(f"{rel}:{node.lineno}: custom unpickler {node.name}")
        if not isinstance(node, ast.Call):
            continue
        func = _name(node.func)
        where = f"{rel}:{node.lineno}: {func}"
        if func == "torch.load" and _keyword(node, "weights_only") is not True:
            problems.append(f"{where} without weights_only=True")
        elif func.endswith("load") and func.split(".")[0] in ("np", "numpy") and _keyword(node, "allow_pickle") not in (None, False):
            problems.append(f"{where} with allow_pickle")
        elif func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads", "dill.load", "dill.loads"):
            problems.append(where)
        elif func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.load_all"):
            problems.append(f"{where} (use yaml.safe_load)")
        elif func in ("eval", "exec", "compile") and isinstance(node.func, ast.Name):
            problems.append(where)
        elif func in ("torch.jit.load", "torch.export.load", "torch.compiler.load_cache_artifacts") \
                and (rel, func) not in ALLOWED:
            problems.append(where)
        elif func.endswith("gopen") or (func.endswith("WebDataset") and "pipe:" in ast.unparse(node)):
            problems.append(f"{where}: webdataset's opener runs 'pipe:' URLs as shell commands")
    return problems


def test_no_loader_can_run_code_from_a_file():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 50
    problems = [p for f in files for p in _problems(f)]
    assert not problems, "\n".join(problems)


def test_the_checker_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "unsafe.py"
    bad.write_text("import torch, pickle, yaml, numpy as np\n"
                   "torch.load('x')\ntorch.load('x', weights_only=False)\npickle.loads(b'')\n"
                   "yaml.load('a')\nnp.load('x', allow_pickle=True)\neval('1')\ntorch.jit.load('m')\n"
                   "class Mine(pickle.Unpickler): pass\ntorch.compiler.load_cache_artifacts(b'')\n")
    assert len(_problems(bad, "pipeline/unsafe.py")) == 9
