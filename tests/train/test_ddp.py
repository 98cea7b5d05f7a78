"""DDP on CPU: 2 gloo processes (torchrun). Gathered ClipLoss == single-process loss on the global
batch, gradients (averaged over ranks, as DDP does) match too; then the real loop runs under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medalign.losses.clip import ClipLoss

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from medalign import dist as D
    from medalign.losses.clip import ClipLoss

    out_dir = sys.argv[1]
    rank, world, _ = D.init_from_env("cpu")
    assert world == 2, world
    torch.manual_seed(0)
    x_img, x_txt = torch.randn(6, 5), torch.randn(6, 5)       # the global batch, same on both ranks
    w_img = torch.nn.Linear(5, 4); w_txt = torch.nn.Linear(5, 4)
    scale = torch.nn.Parameter(torch.tensor(2.0))
    params = [*w_img.parameters(), *w_txt.parameters(), scale]
    rows = slice(3 * rank, 3 * rank + 3)                    # this rank's shard of the batch
    i = torch.nn.functional.normalize(w_img(x_img[rows]), dim=-1)
    t = torch.nn.functional.normalize(w_txt(x_txt[rows]), dim=-1)
    loss = ClipLoss(gather=True)(i, t, scale)["contrastive_loss"]
    loss.backward()
    for p in params:                                        # what DDP does: average grads over ranks
        dist.all_reduce(p.grad); p.grad /= world
    mean_loss = torch.tensor([loss.item()]); dist.all_reduce(mean_loss); mean_loss /= world
    # soft targets: the report features are gathered too
    soft = ClipLoss(gather=True, target_temperature=0.5)(i.detach(), t.detach(), 2.0, x_txt[rows])
    mean_soft = torch.tensor([soft["contrastive_loss"].item()]); dist.all_reduce(mean_soft); mean_soft /= world
    # label targets: same-class studies on the other rank are targets too (the labels are gathered)
    y = torch.tensor([0, 3, 1, 3, 0, -1])
    lab = ClipLoss(gather=True, label_weight=0.5)(i.detach(), t.detach(), 2.0, labels=y[rows])
    mean_lab = torch.tensor([lab["contrastive_loss"].item()]); dist.all_reduce(mean_lab); mean_lab /= world
    # label similarity: the report features are gathered, and each rank finds its own rows by offset
    ls = ClipLoss(gather=True, label_weight=0.5, label_similarity=0.3)(i.detach(), t.detach(), 2.0, x_txt[rows], labels=y[rows])
    mean_ls = torch.tensor([ls["contrastive_loss"].item()]); dist.all_reduce(mean_ls); mean_ls /= world
    if rank == 0:
        json.dump({"loss": mean_loss.item(), "soft": mean_soft.item(), "label": mean_lab.item(), "label_sim": mean_ls.item(),
                   "grads": [p.grad.flatten().tolist() for p in params]},
                  open(os.path.join(out_dir, "ddp.json"), "w"))

    # the real loop, 2 ranks, tiny synthetic data
    from medalign.config import load_config
    from medalign.train.loop import fit
    cfg = load_config(sys.argv[2], ["train.epochs=1", "train.batch_size=2"])
    s = fit(cfg, os.path.join(out_dir, "run"))
    if rank == 0:
        json.dump(s, open(os.path.join(out_dir, "fit.json"), "w"))
    D.cleanup()
    """
)


@pytest.mark.slow
def test_ddp_gather_matches_single_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDALIGN_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), str(ROOT / "configs" / "tiny" / "clip_tiny.yaml")]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "ddp.json").read_text())

    # single process, same global batch, no gather
    torch.manual_seed(0)
    x_img, x_txt = torch.randn(6, 5), torch.randn(6, 5)
    w_img, w_txt = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    scale = torch.nn.Parameter(torch.tensor(2.0))
    params = [*w_img.parameters(), *w_txt.parameters(), scale]
    i = torch.nn.functional.normalize(w_img(x_img), dim=-1)
    t = torch.nn.functional.normalize(w_txt(x_txt), dim=-1)
    loss = ClipLoss(gather=False)(i, t, scale)["contrastive_loss"]
    loss.backward()
    assert abs(got["loss"] - loss.item()) < 1e-5
    soft = ClipLoss(gather=False, target_temperature=0.5)(i.detach(), t.detach(), 2.0, x_txt)["contrastive_loss"]
    assert abs(got["soft"] - soft.item()) < 1e-5 and abs(soft.item() - loss.item()) > 1e-4
    y = torch.tensor([0, 3, 1, 3, 0, -1])  # classes shared across the two ranks' shards
    lab = ClipLoss(gather=False, label_weight=0.5)(i.detach(), t.detach(), 2.0, labels=y)["contrastive_loss"]
    assert abs(got["label"] - lab.item()) < 1e-5 and abs(lab.item() - loss.item()) > 1e-4
    ls = ClipLoss(gather=False, label_weight=0.5, label_similarity=0.3)(i.detach(), t.detach(), 2.0, x_txt, labels=y)
    assert abs(got["label_sim"] - ls["contrastive_loss"].item()) < 1e-5
    for g, p in zip(got["grads"], params):
        torch.testing.assert_close(torch.tensor(g), p.grad.flatten(), atol=1e-5, rtol=1e-4)

    # the loop ran on 2 ranks: 10 studies / 2 ranks / batch 2 -> 2 full steps + (1 short, dropped) per rank
    fit_summary = json.loads((tmp_path / "fit.json").read_text())
    assert fit_summary["world_size"] == 2 and fit_summary["steps"] == 2
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
