"""ClipRecipe's auxiliary lesion-class loss (``recipe.lesion_aux``): masks follow the jittered image,
the loss trains the encoder's local map in training only, and a tiny cohort with masks trains end to end;
the per-voxel lesion loss (``recipe.lesion_voxels``) finds a thin lesion inside strided cells."""
from __future__ import annotations

import json
import math

import pytest
import torch

from medalign.recipes.clip import ClipRecipe, jitter_batch

ENC = {"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2), "local_level": 1, "global_pool": "avg"}


class _FakeText:
    dim = 6
    device = torch.device("cpu")

    def sentence(self, texts):
        return torch.tensor([[float(len(t))] + [1.0] * (self.dim - 1) for t in texts])  # (B, 6)


def _recipe(enc: dict = ENC, shape: tuple = (4, 16, 16), **kw) -> ClipRecipe:
    rec = ClipRecipe(sequences=("flair",), input_shape=shape, embed_dim=4, image_encoder=dict(enc),
                     text_encoder={"device": "cpu"}, gather=False, **kw)
    rec._text[:] = [_FakeText()]
    rec.text_proj = type(rec.text_proj)(6, 4, "linear")  # sized for the fake encoder
    return rec


def _batch(has_mask=(True, True, False)) -> dict:
    b = len(has_mask)
    mask = torch.zeros(b, 4, 16, 16, dtype=torch.uint8)  # (B, D, H, W)
    mask[0, 1:3, 2:6, 2:6] = 1
    image = torch.randn(b, 1, 4, 16, 16) + 3.0 * mask.unsqueeze(1)  # (B, C, D, H, W)
    return {"image": image, "text": ["Acute infarct.", "No abnormality.", "Large tumour."][:b],
            "label": torch.tensor([0, 3, 1][:b]), "mask": mask, "has_mask": torch.tensor(has_mask)}


def test_jitter_moves_the_mask_with_its_image():
    image = torch.zeros(3, 2, 4, 8, 8)
    mask = torch.zeros(3, 4, 8, 8, dtype=torch.uint8)
    image[:, :, 1, 2, 3] = 1.0
    mask[:, 1, 2, 3] = 1
    out, moved = jitter_batch(image, shift=(1, 3, 3), scale=0.2, generator=torch.Generator().manual_seed(0),
                              follow=mask)
    assert moved.dtype == torch.uint8 and int(moved.sum()) == 3
    for b in range(3):
        assert torch.equal(out[b, 0] > 0, moved[b] > 0)  # same voxel in both, wherever the shift put it
    assert not all(torch.equal(moved[b], mask[b]) for b in range(3))  # it did move


def test_training_step_adds_the_lesion_loss_and_trains_the_local_map(caplog):
    torch.manual_seed(0)
    rec = _recipe(lesion_aux=0.5, jitter={"shift": [0, 2, 2], "scale": 0.1})
    rec.train()
    out = rec.training_step(_batch())
    assert set(k for k in out if k.endswith("_loss")) == {"contrastive_loss", "lesion_loss"}
    out["lesion_loss"].backward()
    assert rec.lesion_head.weight.grad.abs().sum() > 0
    assert rec.lesion_head.out_channels == 6  # no lesion + the five classes
    first = rec.image_encoder.levels[0][1]  # the DoubleConv feeding the local map (level 1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())
    rec.eval()
    assert "lesion_loss" not in rec.training_step(_batch())  # training only
    rec.train()
    nomask = {k: v for k, v in _batch().items() if k not in ("mask", "has_mask")}
    with caplog.at_level("WARNING", logger="medalign.recipes.clip"):
        assert "lesion_loss" not in rec.training_step(nomask)  # a cohort without masks trains as before
        rec.training_step(nomask)
    assert sum("no lesion masks" in r.getMessage() for r in caplog.records) == 1  # said once, not every step
    off = _recipe()
    off.train()
    assert off.lesion_head is None and "lesion_loss" not in off.training_step(_batch())


def test_lesion_head_learns_which_class_a_lesion_is():
    """Two studies with the same bright cube, one labelled tumour and one infarct but with a different texture:
    the head learns to tell them apart (the loss falls well below its start)."""
    torch.manual_seed(0)
    rec = _recipe(lesion_aux=1.0)
    rec.train()
    batch = _batch(has_mask=(True, True))
    batch["mask"][1] = batch["mask"][0]
    batch["image"][1] = batch["image"][0] * torch.linspace(0.5, 1.5, 16)  # (1, 4, 16, 16) a gradient on W
    batch["label"] = torch.tensor([1, 0])
    opt = torch.optim.Adam(rec.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = rec.training_step(batch)["lesion_loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    from medalign.losses.lesion import lesion_targets

    with torch.no_grad():
        logits = rec.lesion_head(rec.image_encoder(batch["image"])["local"])  # (B, 6, *grid)
    target = lesion_targets(batch["mask"], batch["label"], tuple(logits.shape[2:]))  # (B, *grid)
    pred = logits.argmax(1)
    # the same cube is called tumour (2) in one study and infarct (1) in the other: not just "a lesion"
    assert torch.equal(pred[0][target[0] > 0].unique(), torch.tensor([2]))
    assert torch.equal(pred[1][target[1] > 0].unique(), torch.tensor([1]))


def test_encoder_without_a_local_map_is_refused():
    class _GlobalOnly(torch.nn.Module):
        out_dim = 8

        def forward(self, x, sequence_mask=None):
            return {"global": x.flatten(1)[:, :8]}

    with pytest.raises(ValueError, match="lesion_aux needs an image encoder with a local feature map"):
        ClipRecipe(sequences=("flair",), image_encoder=_GlobalOnly(), text_encoder={"device": "cpu"}, lesion_aux=0.5)


@pytest.mark.parametrize("targets,evidence", [("any", False), ("fraction", "volume")])
def test_tiny_cohort_with_masks_trains_with_the_lesion_loss(tmp_path, monkeypatch, targets, evidence):
    """End to end through ``fit``: the cached masks reach the recipe, the loss is logged, and the
    saved run loads back with its head's targets and evidence."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_runs import make_tiny_runs, run_config  # noqa: E402

    from medalign.train.loop import fit

    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / "medalign_cache"))
    made = make_tiny_runs(tmp_path, recipes=())
    cfg = run_config("clip", made["manifest"], tmp_path)
    cfg["recipe"].update(lesion_aux=0.5, lesion_targets=targets, lesion_evidence=evidence)
    cfg["train"]["epochs"] = 2
    fit(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lesion = [r["lesion_loss"] for r in rows if r.get("split") == "train" and "lesion_loss" in r]
    assert lesion and all(v > 0 for v in lesion)
    import medalign

    rec = medalign.load(tmp_path / "run").recipe
    assert rec.lesion_loss.targets == targets and rec.lesion_evidence == (evidence or "")


def test_lesion_evidence_feeds_the_head_into_the_embedding_at_inference():
    torch.manual_seed(0)
    rec = _recipe(lesion_aux=0.5, lesion_evidence=True)
    assert rec.image_proj.in_dim == rec.image_encoder.out_dim + 12  # mean and max of 6 class probabilities
    rec.eval()
    image = _batch()["image"]
    before = rec.encode_image(image)
    assert before.shape == (3, 4) and torch.allclose(before.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        rec.lesion_head.bias[3] += 5.0  # the head now sees class index 2 everywhere
    after = rec.encode_image(image)
    assert not torch.allclose(before, after)  # the embedding reads the head, outside training too
    plain = _recipe(lesion_aux=0.5)
    plain.eval()
    p0 = plain.encode_image(image)
    with torch.no_grad():
        plain.lesion_head.bias[3] += 5.0
    assert torch.equal(p0, plain.encode_image(image))  # without it the head is training-only
    with pytest.raises(ValueError, match="lesion_evidence needs recipe.lesion_aux"):
        _recipe(lesion_evidence=True)


def _grid_logits(lesion_cells: int, cls: int, cells: int = 32) -> torch.Tensor:
    """Logits (1, 6, cells): every cell sure of "no lesion" except the first ``lesion_cells``, sure of ``cls``."""
    logits = torch.full((1, 6, cells), -10.0)
    logits[0, 0] = 10.0
    logits[0, 0, :lesion_cells] = -10.0
    logits[0, 1 + cls, :lesion_cells] = 10.0
    return logits


def test_lesion_pooled_evidence_reads_the_lesion_cells_and_not_the_brain():
    from medalign.recipes.clip import lesion_evidence

    clean = lesion_evidence(_grid_logits(0, 1), "lesion")[0]  # (12,)
    assert clean[0] < 1e-6 and clean[6] < 1e-6  # no lesion anywhere: no load, whole brain or top cells
    ev = lesion_evidence(_grid_logits(2, 1), "lesion")[0]  # two tumour cells of 32: the top 2 = 32 // 16
    assert ev[0] == pytest.approx(2 / 32, abs=1e-4)  # the lesion load of the whole brain
    assert ev[6] == pytest.approx(1.0, abs=1e-4)  # the top cells are all lesion
    assert ev[7:].argmax() == 1 and ev[8] == pytest.approx(1.0, abs=1e-4)  # and all tumour
    # the same class mix whatever the lesion's size, unlike a mean over the brain
    assert torch.allclose(lesion_evidence(_grid_logits(8, 1), "lesion")[0, 7:], ev[7:], atol=1e-4)
    brain = lesion_evidence(_grid_logits(2, 1), "brain")[0]
    assert brain[2] == pytest.approx(2 / 32, abs=1e-4) and brain[8] == pytest.approx(1.0, abs=1e-4)


def test_lesion_pooled_evidence_is_not_trained_by_the_contrastive_loss():
    torch.manual_seed(0)
    image = _batch()["image"]
    grads = {}
    for mode in ("brain", "lesion"):
        rec = _recipe(lesion_aux=0.5, lesion_evidence=mode)
        rec.eval()
        rec.encode_image(image).sum().backward()
        g = rec.lesion_head.weight.grad
        grads[mode] = 0.0 if g is None else float(g.abs().sum())
        assert rec.image_proj.net.weight.grad[:, -12:].abs().sum() > 0  # the evidence reaches the projection
    assert grads["brain"] > 0 and grads["lesion"] == 0.0  # only the lesion loss trains the head it reads
    with pytest.raises(ValueError, match="must be false, true, 'brain', 'lesion' or 'volume'"):
        _recipe(lesion_aux=0.5, lesion_evidence="everywhere")


def test_volume_evidence_is_the_lesion_share_per_class_without_gradient():
    from medalign.recipes.clip import VOLUME_FLOOR, lesion_evidence

    def scaled(share: float) -> float:
        return math.log1p(share / VOLUME_FLOOR) / math.log1p(1 / VOLUME_FLOOR)

    clean = lesion_evidence(_grid_logits(0, 1), "volume")[0]  # (6,): all classes, then per class
    assert clean.shape == (6,) and float(clean.max()) < 1e-3  # no lesion: no volume
    ev = lesion_evidence(_grid_logits(2, 1), "volume")[0]  # two tumour cells of 32
    assert float(ev[0]) == pytest.approx(scaled(2 / 32), abs=1e-3)  # all classes
    assert float(ev[2]) == pytest.approx(scaled(2 / 32), abs=1e-3)  # tumour (class 1 -> value 2)
    assert float(ev[[1, 3, 4, 5]].max()) < 1e-3  # no other class
    bigger = lesion_evidence(_grid_logits(8, 1), "volume")[0]
    assert float(bigger[2]) > float(ev[2])  # grows with the lesion, unlike the class mix
    torch.manual_seed(0)
    rec = _recipe(lesion_aux=0.5, lesion_evidence="volume", lesion_targets="fraction")
    assert rec.image_proj.in_dim == rec.image_encoder.out_dim + 6 and rec.lesion_loss.targets == "fraction"
    rec.eval()
    rec.encode_image(_batch()["image"]).sum().backward()
    assert rec.lesion_head.weight.grad is None  # only the lesion loss trains the head
    assert rec.image_proj.net.weight.grad[:, -6:].abs().sum() > 0


# ---------------------------------------------------------------- per-voxel lesion loss (recipe.lesion_voxels)
# a 1x1 conv on the stem's map learns where inside each strided cell a thin lesion lies, in training only
VOXEL_ENC = {"name": "unet3d_cpu", "channels": (16, 8), "stem_stride": (1, 4, 4), "local_level": 0, "global_pool": "avg"}


def _thin_lesions(n: int, seed: int = 0) -> dict:
    """Studies with one bright line a voxel wide across a random row: it fills one row of every 4x4 cell it crosses."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 2, 16, 16, dtype=torch.uint8)  # (B, D, H, W)
    rows = torch.randint(0, 16, (n,), generator=g)
    for i, r in enumerate(rows.tolist()):
        mask[i, :, r, :] = 1
    image = 0.1 * torch.randn(n, 1, 2, 16, 16, generator=g) + 2.0 * mask.unsqueeze(1)  # (B, C, D, H, W)
    return {"image": image, "text": ["Thin white-matter lesion."] * n, "label": torch.full((n,), 4),
            "mask": mask, "has_mask": torch.ones(n, dtype=torch.bool)}


def test_voxel_head_learns_where_in_a_cell_a_thin_lesion_lies():
    torch.manual_seed(0)
    rec = _recipe(VOXEL_ENC, (2, 16, 16), lesion_voxels=1.0, lesion_upsample=(1, 4, 4))
    assert rec.voxel_head.out_channels == 16  # one logit per voxel of a 1x4x4 cell
    rec.train()
    opt = torch.optim.Adam(rec.parameters(), lr=0.02)
    for step in range(150):
        opt.zero_grad()
        out = rec.training_step(_thin_lesions(8, seed=step))
        assert {k for k in out if k.endswith("_loss")} == {"contrastive_loss", "voxel_lesion_loss"}
        out["voxel_lesion_loss"].backward()
        opt.step()
    test = _thin_lesions(8, seed=999)  # rows never seen together
    rec.eval()
    with torch.no_grad():
        logits = rec.voxel_head(rec.image_encoder(test["image"])["local"])  # (B, 16, 2, 4, 4)
    from medalign.losses.lesion import space_to_depth

    target = space_to_depth(test["mask"].float(), (1, 4, 4)) > 0  # (B, 16, 2, 4, 4)
    cells = target.any(1)  # (B, 2, 4, 4): cells the line crosses (one row of four voxels each)
    top4 = logits.topk(4, dim=1).indices  # (B, 4, 2, 4, 4): the head's four most lesion-like voxels per cell
    hit = target.gather(1, top4).all(1)  # (B, 2, 4, 4): exactly the line's row
    # a cell-level head gives a cell's 16 voxels one value: its top four are one fixed row, right in a quarter of cells
    assert float(hit[cells].float().mean()) > 0.8
    assert "voxel_lesion_loss" not in rec.training_step(test)  # training only


def test_lesion_voxels_is_off_by_default_and_checks_its_grid():
    off = _recipe(VOXEL_ENC, (2, 16, 16))
    off.train()
    assert off.voxel_head is None and "voxel_lesion_loss" not in off.training_step(_thin_lesions(2))
    wrong = _recipe(VOXEL_ENC, (2, 16, 16), lesion_voxels=1.0, lesion_upsample=(1, 2, 2))  # the stem is 1x4x4
    wrong.train()
    with pytest.raises(ValueError, match="lesion_upsample must be image grid / local map grid"):
        wrong.training_step(_thin_lesions(2))
