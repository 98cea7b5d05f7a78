"""ClipLoss: known values on hand-made inputs, symmetry, bad shapes; recipe step + sequence mask."""
from __future__ import annotations

import math

import pytest
import torch

from medalign.losses.clip import ClipLoss
from medalign.data.masking import mask_sequences
from medalign.recipes.clip import sequence_dropout, shared_views


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_known_value_2x2() -> None:
    e = torch.eye(2)
    out = ClipLoss()(e, e, torch.tensor(1.0))
    # logits = I: each row CE = log(1 + e^-1), both directions equal
    assert set(out) == {"contrastive_loss"}
    assert out["contrastive_loss"].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_known_value_3x3_asymmetric() -> None:
    img = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    txt = [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]
    s = 2.0
    sim = [[s * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]  # image x text
    simT = [[sim[r][c] for r in range(3)] for c in range(3)]
    expect = (sum(_ce(sim[i], i) for i in range(3)) / 3 + sum(_ce(simT[i], i) for i in range(3)) / 3) / 2
    got = ClipLoss()(torch.tensor(img), torch.tensor(txt), torch.tensor(s))["contrastive_loss"]
    assert got.item() == pytest.approx(expect, abs=1e-6)
    # swapping the modalities gives the same symmetric loss
    got2 = ClipLoss()(torch.tensor(txt), torch.tensor(img), s)["contrastive_loss"]
    assert got2.item() == pytest.approx(expect, abs=1e-6)


def test_perfect_alignment_large_scale_goes_to_zero() -> None:
    e = torch.eye(4, 8)
    assert ClipLoss()(e, e, 100.0)["contrastive_loss"].item() < 1e-6


def test_gradients_flow_to_both_and_scale() -> None:
    img = torch.randn(3, 5, requires_grad=True)
    txt = torch.randn(3, 5, requires_grad=True)
    scale = torch.tensor(3.0, requires_grad=True)
    ClipLoss()(img, txt, scale)["contrastive_loss"].backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0 and scale.grad is not None


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2, 4\)"):
        ClipLoss()(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(torch.randn(3, 4, 1), torch.randn(3, 4, 1), 1.0)


def test_sequence_mask_and_dropout() -> None:
    x = torch.ones(2, 3, 2, 2, 2)
    m = torch.tensor([[True, False, True], [False, False, True]])
    y = mask_sequences(x, m)
    assert y[0, 1].abs().sum() == 0 and y[0, 0].sum() == 8 and y[1, :2].abs().sum() == 0
    g = torch.Generator().manual_seed(0)
    full = torch.ones(64, 3, dtype=torch.bool)
    d = sequence_dropout(full, 0.9, generator=g)
    assert d.any(dim=1).all(), "every sample keeps at least one sequence"
    assert (d.sum(1) < 3).any()
    assert not (sequence_dropout(m, 0.9, generator=g) & ~m).any(), "dropout never adds a missing sequence"
    assert torch.equal(sequence_dropout(m, 0.0), m)


def test_single_sequence_views() -> None:
    """``single`` keeps exactly one present sequence in about that share of samples, each
    present sequence equally likely, and never one the study lacks."""
    g = torch.Generator().manual_seed(0)
    full = torch.ones(4000, 3, dtype=torch.bool)
    d = sequence_dropout(full, 0.0, generator=g, single=0.3)
    one = d.sum(1) == 1
    assert 0.27 < one.float().mean() < 0.33 and (d.sum(1)[~one] == 3).all()
    share = d[one].float().mean(0)  # (3,) which sequence the single views kept
    assert (share - 1 / 3).abs().max() < 0.05, share
    part = torch.tensor([[True, False, True]]).repeat(4000, 1)
    d = sequence_dropout(part, 0.1, generator=g, single=1.0)
    assert (d.sum(1) == 1).all() and not (d & ~part).any()
    assert 0.45 < d[:, 0].float().mean() < 0.55


def test_weighted_single_sequence_views() -> None:
    """``weights`` pick the one sequence in proportion to them among the present ones, a weight of 0
    never while a weighted one is present, uniformly where none is; equal weights pick exactly what no
    weights pick (the same random draw, so a run without the option is unchanged)."""
    from medalign.recipes.views import single_views

    full = torch.ones(20000, 3, dtype=torch.bool)
    assert torch.equal(single_views(full, torch.Generator().manual_seed(3)),
                       single_views(full, torch.Generator().manual_seed(3), torch.tensor([2.0, 2.0, 2.0])))
    d = single_views(full, torch.Generator().manual_seed(0), torch.tensor([1.0, 0.0, 2.0]))
    assert (d.sum(1) == 1).all()
    share = d.float().mean(0)  # (3,)
    assert share[1] == 0 and abs(share[0] - 1 / 3) < 0.02 and abs(share[2] - 2 / 3) < 0.02, share
    mixed = torch.tensor([[True, True, False], [False, True, False], [False, False, False]]).repeat(6000, 1)
    d = single_views(mixed, torch.Generator().manual_seed(1), torch.tensor([0.0, 0.0, 1.0]))
    assert not (d & ~mixed).any() and torch.equal(d.any(1), mixed.any(1))  # never an absent one, none from none
    first = d[0::3].float().mean(0)  # no weighted sequence present: uniform over the two it has
    assert abs(first[0] - 0.5) < 0.03 and abs(first[1] - 0.5) < 0.03


def test_single_sequence_weights_in_the_recipe() -> None:
    """The recipe option: training views of one sequence follow the weights; one-line errors name the key."""
    from medalign.recipes.clip import ClipRecipe

    kw = dict(sequences=("dwi", "t2s", "flair"), input_shape=(4, 16, 16), embed_dim=8,
              image_encoder={"name": "unet3d_cpu", "channels": [4, 8, 8, 8], "stem_stride": [1, 4, 4],
                             "layer_order": "cbr", "global_pool": "avgmax", "pool_levels": "all", "out_dim": 8},
              text_encoder={"device": "cpu"}, gather=False, single_sequence=1.0)
    r = ClipRecipe(single_sequence_weights={"flair": 1}, **kw).train()
    batch = {"image": torch.randn(64, 3, 4, 16, 16), "sequence_mask": torch.ones(64, 3, dtype=torch.bool)}
    _, mask, _ = r.image_inputs(batch)
    assert torch.equal(mask, torch.tensor([[False, False, True]]).expand(64, 3))
    with pytest.raises(ValueError, match=r"recipe.single_sequence_weights: 't1' is not one of the run's sequences \(dwi, t2s, flair\)"):
        ClipRecipe(single_sequence_weights={"t1": 1}, **kw)
    with pytest.raises(ValueError, match=r"non-negative numbers, not all 0; got dwi: -1"):
        ClipRecipe(single_sequence_weights={"dwi": -1, "flair": 1}, **kw)
    with pytest.raises(ValueError, match="not all 0"):
        ClipRecipe(single_sequence_weights={"flair": 0}, **kw)
    with pytest.raises(ValueError, match="must map sequences to weights"):
        ClipRecipe(single_sequence_weights=2.0, **kw)


def _soft_ce(row: list[float], target: list[float]) -> float:
    lse = math.log(sum(math.exp(v) for v in row))
    return sum(t * (lse - v) for t, v in zip(target, row))


def test_soft_targets_known_value() -> None:
    img = [[1.0, 0.0], [0.6, 0.8]]
    txt = [[1.0, 0.0], [0.0, 1.0]]
    feats = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # cos(f0, f1) = 0.6 (f0 is normalised inside)
    tau, s = 0.5, 3.0
    e0, e1 = math.exp(1 / tau), math.exp(0.6 / tau)
    targets = [[e0 / (e0 + e1), e1 / (e0 + e1)], [e1 / (e0 + e1), e0 / (e0 + e1)]]
    sim = [[s * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]
    simT = [[sim[r][c] for r in range(2)] for c in range(2)]
    expect = (sum(_soft_ce(sim[i], targets[i]) for i in range(2)) / 2
              + sum(_soft_ce(simT[i], targets[i]) for i in range(2)) / 2) / 2
    got = ClipLoss(target_temperature=tau)(torch.tensor(img), torch.tensor(txt), s, feats)["contrastive_loss"]
    assert got.item() == pytest.approx(expect, abs=1e-6)
    plain = ClipLoss()(torch.tensor(img), torch.tensor(txt), s)["contrastive_loss"]
    assert abs(got.item() - plain.item()) > 1e-3, "similar reports must change the loss"


def test_soft_targets_limits_and_errors() -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    plain = ClipLoss()(img, txt, 5.0)["contrastive_loss"]
    # orthogonal (distinct) report features at a tiny temperature -> one-hot targets -> plain loss
    soft = ClipLoss(target_temperature=1e-3)(img, txt, 5.0, torch.eye(5, 7))["contrastive_loss"]
    assert soft.item() == pytest.approx(plain.item(), abs=1e-6)
    # gradients still reach both embeddings; the targets are constants
    i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    f = torch.randn(5, 7, requires_grad=True)
    ClipLoss(target_temperature=0.1)(i, t, 5.0, f)["contrastive_loss"].backward()
    assert i.grad.abs().sum() > 0 and t.grad.abs().sum() > 0 and f.grad is None
    with pytest.raises(ValueError, match="target_features"):
        ClipLoss(target_temperature=0.1)(img, txt, 5.0)
    with pytest.raises(ValueError, match="> 0"):
        ClipLoss(target_temperature=0.0)


def test_label_targets_known_value() -> None:
    # 3 studies, the first two of one class: row 0 targets (1 - w) [1, 0, 0] + w [1/2, 1/2, 0]
    img = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    txt = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
    w, s = 0.5, 2.0
    targets = [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]
    sim = [[s * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]
    simT = [[sim[r][c] for r in range(3)] for c in range(3)]
    expect = (sum(_soft_ce(sim[i], targets[i]) for i in range(3)) / 3
              + sum(_soft_ce(simT[i], targets[i]) for i in range(3)) / 3) / 2
    got = ClipLoss(label_weight=w)(torch.tensor(img), torch.tensor(txt), s, labels=torch.tensor([4, 4, 0]))
    assert got["contrastive_loss"].item() == pytest.approx(expect, abs=1e-6)


def test_label_targets_limits_unknown_and_errors() -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    plain = ClipLoss()(img, txt, 5.0)["contrastive_loss"].item()
    lab = ClipLoss(label_weight=1.0)
    # every class distinct, or every label unknown (-1): the plain loss
    assert lab(img, txt, 5.0, labels=torch.tensor([0, 1, 2, 3]))["contrastive_loss"].item() == pytest.approx(plain, abs=1e-6)
    assert lab(img, txt, 5.0, labels=torch.tensor([-1, -1, -1, -1]))["contrastive_loss"].item() == pytest.approx(plain, abs=1e-6)
    # a shared class changes it; unknown labels are not one class with each other
    assert abs(lab(img, txt, 5.0, labels=torch.tensor([2, 2, 0, 1]))["contrastive_loss"].item() - plain) > 1e-3
    # w = 1 and one class for all: every pairing is a target, so a swap of the texts costs nothing
    same = torch.tensor([1, 1, 1, 1])
    a = lab(img, txt, 5.0, labels=same)["contrastive_loss"].item()
    b = lab(img, txt.flip(0), 5.0, labels=same)["contrastive_loss"].item()
    assert a == pytest.approx(b, abs=1e-6)
    # it composes with the soft report targets (those rows mixed, not replaced)
    both = ClipLoss(target_temperature=0.5, label_weight=0.5)(img, txt, 5.0, torch.randn(4, 3), labels=same)
    assert torch.isfinite(both["contrastive_loss"])
    with pytest.raises(ValueError, match="class labels"):
        ClipLoss(label_weight=0.5)(img, txt, 5.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ClipLoss(label_weight=1.5)


def test_label_targets_pull_same_class_together() -> None:
    """Trained on label targets, an image ends nearer another study's report of its class than the plain loss leaves it."""
    torch.manual_seed(0)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])

    def fit(loss: ClipLoss) -> torch.Tensor:
        img = torch.randn(4, 8, requires_grad=True)
        opt = torch.optim.SGD([img], lr=0.5)
        for _ in range(300):
            opt.zero_grad()
            loss(torch.nn.functional.normalize(img, dim=-1), txt, 5.0, labels=labels)["contrastive_loss"].backward()
            opt.step()
        return torch.nn.functional.normalize(img.detach(), dim=-1)

    plain, lab = fit(ClipLoss()), fit(ClipLoss(label_weight=0.8))
    # image 0 vs study 1's report (same class) and vs study 2's (other class)
    assert (lab[0] @ txt[1]) - (lab[0] @ txt[2]) > (plain[0] @ txt[1]) - (plain[0] @ txt[2]) + 0.2


def test_label_similarity_splits_the_class_share_by_report_similarity() -> None:
    """Row 0's class share: its own report keeps 1/n, the other same-class reports split (n-1)/n by
    softmax(cos / T) of their report features; other classes get nothing."""
    img = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, -0.6]]
    txt = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]
    feats = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([2, 2, 2, 5])  # studies 0-2 one class; study 1's report is like study 0's
    w, s, temp = 0.5, 2.0, 0.2
    f = torch.nn.functional.normalize(feats, dim=-1)
    cos = f @ f.T
    targets = torch.zeros(4, 4)
    for r in range(3):
        others = [c for c in range(3) if c != r]
        share = torch.softmax(cos[r, others] / temp, 0)
        targets[r, r] = (1 - w) + w / 3
        targets[r, others] = w * share * 2 / 3
    targets[3, 3] = 1.0
    sim = [[s * sum(a * b for a, b in zip(i, t)) for t in txt] for i in img]
    simT = [[sim[r][c] for r in range(4)] for c in range(4)]
    expect = (sum(_soft_ce(sim[i], targets[i].tolist()) for i in range(4)) / 4
              + sum(_soft_ce(simT[i], targets[i].tolist()) for i in range(4)) / 4) / 2
    loss = ClipLoss(label_weight=w, label_similarity=temp)
    got = loss(torch.tensor(img), torch.tensor(txt), s, feats, labels=labels)["contrastive_loss"].item()
    assert got == pytest.approx(expect, abs=1e-6)
    assert targets[0, 1] > 5 * targets[0, 2]  # row 0 goes mostly to the report like its own


def test_label_similarity_limits_and_errors() -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    feats, labels = torch.randn(5, 3), torch.tensor([1, 1, 1, 0, -1])
    equal = ClipLoss(label_weight=0.5)(img, txt, 5.0, labels=labels)["contrastive_loss"].item()
    # a very high temperature shares equally: the plain label targets
    flat = ClipLoss(label_weight=0.5, label_similarity=1e6)(img, txt, 5.0, feats, labels=labels)["contrastive_loss"]
    assert flat.item() == pytest.approx(equal, abs=1e-5)
    # a finite one moves the class share, but never across classes: one study per class is the plain loss
    sharp = ClipLoss(label_weight=0.5, label_similarity=0.05)(img, txt, 5.0, feats, labels=labels)["contrastive_loss"]
    assert abs(sharp.item() - equal) > 1e-4
    plain = ClipLoss()(img, txt, 5.0)["contrastive_loss"].item()
    distinct = ClipLoss(label_weight=0.5, label_similarity=0.05)(img, txt, 5.0, feats, labels=torch.tensor([0, 1, 2, 3, 4]))
    assert distinct["contrastive_loss"].item() == pytest.approx(plain, abs=1e-6)
    with pytest.raises(ValueError, match="target_features"):
        ClipLoss(label_weight=0.5, label_similarity=0.1)(img, txt, 5.0, labels=labels)
    with pytest.raises(ValueError, match="> 0"):
        ClipLoss(label_weight=0.5, label_similarity=0.0)


def test_twin_views_share_one_view() -> None:
    g = torch.Generator().manual_seed(0)
    original = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)  # (4, 3)
    dropped = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    groups = ["a", "b", "a", "c"]  # studies 0 and 2: a study and its twin
    out = shared_views(dropped, original, groups, 0.0, generator=g)
    assert torch.equal(out[0], dropped[0]) and torch.equal(out[2], dropped[0])  # the first member's view
    assert torch.equal(out[[1, 3]], dropped[[1, 3]])  # studies alone keep their own
    ones = [shared_views(dropped, original, groups, 1.0, generator=g) for _ in range(40)]
    for o in ones:
        assert int(o[0].sum()) == 1 and torch.equal(o[0], o[2]) and not (o[0] & ~dropped[0]).any()
    assert {int(o[0].nonzero()) for o in ones} == {0, 2}  # either sequence of the first member's view
    # a sequence one member lacks is never the shared view
    orig2 = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    for _ in range(20):
        o = shared_views(orig2.clone(), orig2, ["a", "a"], 1.0, generator=g)
        assert int(o[0].nonzero()) in (1, 2) and torch.equal(o[0], o[1])


def test_label_similarity_without_label_targets_is_refused() -> None:
    with pytest.raises(ValueError, match="needs label_weight > 0"):
        ClipLoss(label_similarity=0.1)
