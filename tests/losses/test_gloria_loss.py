"""Known-value, reference-equivalence, gradient and bad-input tests for the GLoRIA local loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medalign.losses.gloria import GloriaLocalLoss, local_similarity, symmetric_ce, word_region_attention


def _softmax2(a: float, b: float) -> tuple[float, float]:
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def _cos(x: tuple[float, float], y: tuple[float, float]) -> float:
    return (x[0] * y[0] + x[1] * y[1]) / (math.hypot(*x) * math.hypot(*y))


# Two images with two regions each (E = 2), two reports: report 0 has one real word + one pad,
# report 1 has two real words.
IMG = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],      # image 0: regions e1, e2
                    [[2.0, 0.0], [0.0, 0.5]]])     # image 1: regions 2 e1, 0.5 e2
WORDS = torch.tensor([[[3.0, 0.0], [9.0, 9.0]],    # report 0: word e1 (norm 3), pad (ignored)
                      [[0.0, 1.0], [1.0, 1.0]]])   # report 1: e2, (e1+e2)
MASK = torch.tensor([[True, False], [True, True]])


def _hand_score(img: list[tuple[float, float]], words: list[tuple[float, float]], t1=4.0, t2=5.0) -> float:
    """Paper formula by hand: attention over the 2 regions, context, cosine, log-sum-exp."""
    total = 0.0
    for q in words:
        n = math.hypot(*q)
        qn = (q[0] / n, q[1] / n)
        logits = [qn[0] * r[0] + qn[1] * r[1] for r in img]
        a0, a1 = _softmax2(t1 * logits[0], t1 * logits[1])
        ctx = (a0 * img[0][0] + a1 * img[1][0], a0 * img[0][1] + a1 * img[1][1])
        total += math.exp(t2 * _cos(q, ctx))
    return math.log(total)


def test_attention_known_values():
    attn = word_region_attention(IMG, WORDS, temp1=4.0)             # (I, T, W, R)
    assert attn.shape == (2, 2, 2, 2)
    # image 0, report 0, word e1: logits (1, 0) -> softmax(4, 0)
    a = math.exp(4) / (math.exp(4) + 1)
    assert attn[0, 0, 0].tolist() == pytest.approx([a, 1 - a], rel=1e-6)
    # image 1, report 1, word (e1+e2)/sqrt2: logits (2/sqrt2, 0.5/sqrt2)
    a0, a1 = _softmax2(4 * 2 / math.sqrt(2), 4 * 0.5 / math.sqrt(2))
    assert attn[1, 1, 1].tolist() == pytest.approx([a0, a1], rel=1e-6)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 2, 2))


def test_local_similarity_known_values():
    s, attn = local_similarity(IMG, WORDS, MASK, temp1=4.0, temp2=5.0, return_attention=True)
    assert s.shape == (2, 2) and attn is not None
    imgs = [[(1.0, 0.0), (0.0, 1.0)], [(2.0, 0.0), (0.0, 0.5)]]
    reps = [[(3.0, 0.0)], [(0.0, 1.0), (1.0, 1.0)]]  # pad word of report 0 left out
    for i in range(2):
        for t in range(2):
            assert s[i, t].item() == pytest.approx(_hand_score(imgs[i], reps[t]), rel=1e-5), (i, t)
    # single word e1 against image 0: context (a, 1-a), score = 5 * cos
    a = math.exp(4) / (math.exp(4) + 1)
    assert s[0, 0].item() == pytest.approx(5 * a / math.hypot(a, 1 - a), rel=1e-6)
    # mean aggregation subtracts log(number of real words)
    s_mean, _ = local_similarity(IMG, WORDS, MASK, agg="mean")
    assert torch.allclose(s_mean[:, 1], s[:, 1] - math.log(2))
    assert torch.allclose(s_mean[:, 0], s[:, 0])


def test_loss_known_value():
    s, _ = local_similarity(IMG, WORDS, MASK)
    logits = 10.0 * s
    # symmetric CE by hand
    l = logits.tolist()
    ce_rows = [-(l[i][i] - math.log(sum(math.exp(x) for x in l[i]))) for i in range(2)]
    ce_cols = [-(l[j][j] - math.log(sum(math.exp(l[i][j]) for i in range(2)))) for j in range(2)]
    expected = 0.5 * (sum(ce_rows) / 2 + sum(ce_cols) / 2)
    out = GloriaLocalLoss(temp1=4, temp2=5, temp3=10)(IMG, WORDS, MASK)
    assert set(out) == {"local_loss"}
    assert out["local_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert symmetric_ce(logits).item() == pytest.approx(expected, rel=1e-5)


def _reference_loop(img, words, mask, t1=4.0, t2=5.0, t3=10.0):
    """Straight port of GLoRIA's per-report loop (without its word-softmax quirk)."""
    B = img.shape[0]
    sims = []
    for t in range(B):
        w = words[t][mask[t]]                                       # (n, E)
        wn = F.normalize(w, dim=-1)
        col = []
        for i in range(B):
            attn = torch.softmax(t1 * wn @ img[i].T, dim=-1)       # (n, R)
            ctx = attn @ img[i]                                     # (n, E)
            cos = F.cosine_similarity(w, ctx, dim=-1)
            col.append(torch.log(torch.exp(t2 * cos).sum()))
        sims.append(torch.stack(col))
    S = torch.stack(sims, 1) * t3                                   # (I, T)
    lab = torch.arange(B)
    return 0.5 * (F.cross_entropy(S, lab) + F.cross_entropy(S.T, lab))


def test_matches_reference_loop_random():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 5, 4, generator=g)
    words = torch.randn(3, 6, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ours = GloriaLocalLoss()(img, words, mask)["local_loss"]
    assert ours.item() == pytest.approx(_reference_loop(img, words, mask).item(), rel=1e-5)


def test_word_softmax_variant_runs_and_differs():
    g = torch.Generator().manual_seed(1)
    img, words = torch.randn(2, 4, 3, generator=g), torch.randn(2, 3, 3, generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    a = GloriaLocalLoss()(img, words, mask)["local_loss"]
    b = GloriaLocalLoss(word_softmax=True)(img, words, mask)["local_loss"]
    assert torch.isfinite(b) and not torch.isclose(a, b)


def test_gradients_reach_all_inputs_and_are_finite():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(4, 6, 8, generator=g, requires_grad=True)
    words = torch.randn(4, 5, 8, generator=g)
    words[1, 3:] = 0.0                                              # zero pad vectors: no NaN from norms
    words.requires_grad_(True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    loss = GloriaLocalLoss(normalise_regions=True)(img, words, mask)["local_loss"]
    loss.backward()
    for t in (img, words):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert words.grad[1, 3:].abs().sum() == 0                       # padded words get no gradient


def test_aligned_pairs_have_lower_loss():
    # Each report's word points at a region only its own image has: the loss should be lower
    # than for the same data with reports shuffled.
    img = torch.zeros(3, 4, 3)
    for b in range(3):
        img[b, b, b] = 3.0
    words = torch.eye(3)[:, None, :]                                # (3, 1, 3)
    mask = torch.ones(3, 1, dtype=torch.bool)
    loss = GloriaLocalLoss()
    good = loss(img, words, mask)["local_loss"]
    bad = loss(img, words[[1, 2, 0]], mask)["local_loss"]
    assert good < bad


def test_empty_report_is_finite():
    img = torch.randn(2, 3, 4)
    words = torch.randn(2, 2, 4)
    mask = torch.tensor([[True, True], [False, False]])
    out = GloriaLocalLoss()(img, words, mask)["local_loss"]
    assert torch.isfinite(out)


@pytest.mark.parametrize(
    "img,words,mask,msg",
    [
        (torch.randn(2, 3), torch.randn(2, 2, 3), torch.ones(2, 2, dtype=torch.bool), "image_local must be"),
        (torch.randn(2, 3, 4), torch.randn(2, 2, 5), torch.ones(2, 2, dtype=torch.bool), "embedding sizes"),
        (torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.ones(2, 3, dtype=torch.bool), "word_mask must be"),
        (torch.randn(3, 3, 4), torch.randn(2, 2, 4), torch.ones(2, 2, dtype=torch.bool), "batch sizes differ"),
    ],
)
def test_bad_shapes_raise_clear_errors(img, words, mask, msg):
    with pytest.raises(ValueError, match=msg):
        GloriaLocalLoss()(img, words, mask)


def test_bad_agg():
    with pytest.raises(ValueError, match="agg"):
        GloriaLocalLoss(agg="max")


# ------------------------------------------------------------------ region mask (attention inside the head)
def test_region_mask_known_values():
    """Image 0 may only attend to region 1 (e2): its context is e2 whatever the word. Image 1 has no
    allowed region, so it keeps all of them (same as no mask)."""
    rm = torch.tensor([[False, True], [False, False]])
    a = word_region_attention(IMG, WORDS, temp1=4.0, region_mask=rm)  # (I, T, W, R)
    assert torch.allclose(a[0, :, :, 1], torch.ones(2, 2)) and torch.all(a[0, :, :, 0] == 0)
    assert torch.allclose(a[1], word_region_attention(IMG, WORDS, temp1=4.0)[1])
    s, _ = local_similarity(IMG, WORDS, MASK, temp1=4.0, temp2=5.0, region_mask=rm)
    # image 0 vs report 0 (single word e1): context e2 -> cos 0 -> score 5 * 0
    assert s[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    # image 0 vs report 1: words e2 (cos 1) and e1+e2 (cos 1/sqrt2)
    assert s[0, 1].item() == pytest.approx(math.log(math.exp(5.0) + math.exp(5.0 / math.sqrt(2))), rel=1e-5)


def test_region_mask_gradient_and_bad_shape():
    img = IMG.clone().requires_grad_(True)
    words = WORDS.clone().requires_grad_(True)
    rm = torch.tensor([[True, False], [True, True]])
    out = GloriaLocalLoss()(img, words, MASK, rm)["local_loss"]
    out.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(words.grad).all()
    # the masked-out region of image 0 gets no gradient through the attention/context
    assert torch.all(img.grad[0, 1] == 0) and img.grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="region_mask must be"):
        word_region_attention(IMG, WORDS, region_mask=torch.ones(2, 3, dtype=torch.bool))
