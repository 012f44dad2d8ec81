"""Data-parallel training with the regions replayed from CUDA graphs (the default
``train.compile_mode=reduce-overhead``): DDP's gradient hooks and buckets read gradients that the
backward graphs wrote into their memory pool. Two ranks over gloo on one GPU (NCCL refuses two
ranks on one device; the hooks and buckets are the same code for both) take the same steps as the
same two ranks in inductor's default mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORLD = 2


def _rank(rank: int, mode: str, store: str, out: str) -> None:
    import numpy as np
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.config import load_config
    from pipeline.data import collate_pairs
    from pipeline.step import build_train_state, compile_regions, train_step
    from pipeline.train import ddp_options
    from preprocessing.synthetic import generate_clip
    from preprocessing.synthetic.truth_pairs import clip_pairs

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    device = torch.device("cuda", 0)
    cfg = load_config("smoke", ["camera.image_size=32", "loss.box_size=32", "train.precision=bf16",
                                "train.compile=true", f"train.compile_mode={mode}"])
    clip = generate_clip(cfg.synthetic, rank, 0)  # each rank its own identity
    pairs = clip_pairs(clip.clip_id, clip.frames, clip.truth, cfg.camera.image_size, 4, np.random.default_rng(rank))
    batches = [collate_pairs(pairs[i:i + 2]).to(device) for i in (0, 2)]
    torch.manual_seed(0)
    state = build_train_state(cfg, device)
    compile_regions(state.network, mode=mode)
    state.model = DistributedDataParallel(state.model, device_ids=[0], **ddp_options())
    flat = lambda: torch.cat([p.detach().float().flatten() for p in state.network.parameters()])  # noqa: E731
    start = flat()
    totals = [float(train_step(state, batches[step % 2])[0]["total"]) for step in range(4)]
    torch.save({"moved": (flat() - start).cpu(), "weights": flat().cpu()}, f"{out}.{rank}.pt")
    Path(f"{out}.{rank}.json").write_text(json.dumps(totals))
    torch.distributed.destroy_process_group()


@pytest.mark.gpu
def test_ddp_steps_with_cuda_graphs_equal_the_default_mode(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    results = {}
    for mode in ("default", "reduce-overhead"):
        out = str(tmp_path / mode)
        torch.multiprocessing.spawn(_rank, args=(mode, str(tmp_path / f"store_{mode}"), out), nprocs=WORLD)
        totals = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(WORLD)]
        results[mode] = (totals, [torch.load(f"{out}.{r}.pt", weights_only=True) for r in range(WORLD)])
    (want, want_w), (got, got_w) = results["default"], results["reduce-overhead"]
    print("totals", want, got)
    assert want[0] != want[1]  # the ranks trained on different data
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=2e-2, atol=1e-4)
    for weights in (want_w, got_w):  # the all-reduced gradients kept the ranks' weights identical
        torch.testing.assert_close(weights[1]["weights"], weights[0]["weights"], rtol=0, atol=0)
    cosine = float(torch.nn.functional.cosine_similarity(got_w[0]["moved"], want_w[0]["moved"], dim=0))
    print("update cosine", cosine)
    assert cosine > 0.9, cosine
