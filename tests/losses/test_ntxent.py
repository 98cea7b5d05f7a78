"""Known-value, gradient and bad-shape tests for NT-Xent."""
import math

import pytest
import torch
import torch.nn.functional as F

from medalign.losses.ntxent import NTXentLoss


def test_ntxent_known_value_orthogonal_pairs():
    # Two pairs of identical one-hot vectors, tau = 1. Anchor e1 sees: partner e1 (sim 1),
    # two e2 views (sim 0) -> loss = -log(e / (e + 2)) for every one of the 4 anchors.
    e = torch.eye(2)
    out = NTXentLoss(temperature=1.0)(e.clone(), e.clone())
    assert out["contrastive_loss"].item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_ntxent_known_value_temperature_and_scale_invariance():
    e = torch.eye(2)
    out = NTXentLoss(temperature=0.1)(3 * e, 0.5 * e)  # norms do not matter
    assert out["contrastive_loss"].item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=2e-6)


def test_ntxent_matches_reference_implementation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.1
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / tau
    ref = 0.0
    for i in range(10):
        j = (i + 5) % 10
        denom = sum(math.exp(sim[i, k].item()) for k in range(10) if k != i)
        ref += -math.log(math.exp(sim[i, j].item()) / denom)
    ref /= 10
    assert NTXentLoss(tau)(z1, z2)["contrastive_loss"].item() == pytest.approx(ref, rel=1e-5)


def test_ntxent_groups_remove_false_negatives():
    # Pairs 0 and 1 belong to one patient: with groups they are not negatives of each other,
    # leaving only the pair-2 views as negatives: loss = -log(e / (e + 2 * e^0)) for pairs 0/1 anchors.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    plain = NTXentLoss(1.0)(z, z)["contrastive_loss"].item()
    grouped = NTXentLoss(1.0)(z, z, groups=torch.tensor([7, 7, 9]))["contrastive_loss"].item()
    a01 = -math.log(math.e / (math.e + 2))  # anchors of pairs 0/1: negatives are the two e2 views
    a2 = -math.log(math.e / (math.e + 4))  # anchors of pair 2: four e1 views at sim 0
    assert grouped == pytest.approx((4 * a01 + 2 * a2) / 6, abs=1e-6)
    assert grouped < plain


def test_ntxent_gradient_flows_and_finite():
    z1 = torch.randn(4, 6, requires_grad=True)
    z2 = torch.randn(4, 6, requires_grad=True)
    loss = NTXentLoss(0.1)(z1, z2)["contrastive_loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert z1.grad is not None and z1.grad.abs().sum() > 0 and torch.isfinite(z2.grad).all()


@pytest.mark.parametrize("a,b", [((4, 6), (3, 6)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4))])
def test_ntxent_bad_shapes(a, b):
    with pytest.raises(ValueError, match="NT-Xent"):
        NTXentLoss()(torch.randn(*a), torch.randn(*b))


def test_ntxent_bad_groups_and_temperature():
    with pytest.raises(ValueError, match="groups"):
        NTXentLoss()(torch.randn(3, 2), torch.randn(3, 2), groups=torch.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)


_DDP_WORKER = '''
import json, os, sys
import torch
import torch.distributed as dist
from medalign.losses.ntxent import NTXentLoss
from medalign.losses.supcon import SupConLoss

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
z1, z2 = torch.randn(6, 4), torch.randn(6, 4)          # the global batch, same on both ranks
rows = slice(3 * rank, 3 * rank + 3)
local = torch.tensor([0, 0, 1])                         # batch-local patient ids on every rank
nt = NTXentLoss(0.1, gather=True)(z1[rows], z2[rows], groups=local)["contrastive_loss"].item()
sc_local = SupConLoss(gather=True, local_labels=True)(torch.stack([z1, z2], 1)[rows], local)["supcon_loss"].item()
sc_global = SupConLoss(gather=True)(z1[rows], local)["supcon_loss"].item()
if rank == 0:
    json.dump({"nt": nt, "sc_local": sc_local, "sc_global": sc_global}, open(os.path.join(sys.argv[1], "out.json"), "w"))
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_gather_across_two_ranks_matches_single_process(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from medalign.losses.supcon import SupConLoss

    (tmp_path / "w.py").write_text(_DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "w.py"), str(tmp_path)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    # Local ids of the two ranks must stay apart: global groups 0,0,1 | 2,2,3.
    glob = torch.tensor([0, 0, 1, 2, 2, 3])
    assert got["nt"] == pytest.approx(NTXentLoss(0.1, gather=False)(z1, z2, groups=glob)["contrastive_loss"].item(), rel=1e-5)
    ref_local = SupConLoss(gather=False)(torch.stack([z1, z2], 1), glob)["supcon_loss"].item()
    assert got["sc_local"] == pytest.approx(ref_local, rel=1e-5)
    # Global class labels are shared across ranks: 0,0,1 | 0,0,1.
    ref_global = SupConLoss(gather=False)(z1, torch.tensor([0, 0, 1, 0, 0, 1]))["supcon_loss"].item()
    assert got["sc_global"] == pytest.approx(ref_global, rel=1e-5)
