"""ClipRecipe text views (label-preserving report views in training) and the optional text adapter."""
from __future__ import annotations

import torch

from medalign.data.reports import label_report, report_views

REPORT = ("Indication: headache. Acute infarct in the left MCA territory. No haemorrhage. "
          "Incidental pineal cyst. IMPRESSION: Left acute infarct. Page 1 of 1")


class _FakeText:
    dim = 6
    device = torch.device("cpu")

    def __init__(self):
        self.seen: list[str] = []

    def sentence(self, texts):
        self.seen.extend(texts)
        return torch.tensor([[float(len(t))] + [1.0] * (self.dim - 1) for t in texts])  # (B, 6)


def _recipe(**kw):
    from medalign.recipes.clip import ClipRecipe

    rec = ClipRecipe(sequences=("flair",), input_shape=(8, 16, 16), text_section="impression", embed_dim=4,
                     image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2), "local_level": 1,
                                    "global_pool": "avg"}, text_encoder={"device": "cpu"}, gather=False, **kw)
    fake = _FakeText()
    rec._text[:] = [fake]
    rec.text_proj = type(rec.text_proj)(6, 4, "linear")  # sized for the fake encoder
    if rec.text_adapter is not None:  # built for the real encoder's width: rebuild at 6
        rec.text_adapter = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.GELU(), torch.nn.Linear(6, 6))
        torch.nn.init.zeros_(rec.text_adapter[2].weight)
        torch.nn.init.zeros_(rec.text_adapter[2].bias)
    return rec, fake


def test_report_views_are_distinct_and_keep_the_label():
    views = report_views(REPORT, "impression")
    assert views[0] == "Left acute infarct."
    assert len(views) == len(set(views)) >= 3
    assert "Acute infarct in the left MCA territory. No haemorrhage. Incidental pineal cyst." in views
    assert all("Indication" not in v and "Page 1" not in v for v in views)
    assert {label_report(v) for v in views} == {"infarct"}  # no view drops the finding
    unfiltered = report_views(REPORT, "impression", label_preserving=False)
    assert any(label_report(v) == "normal" for v in unfiltered)  # which the filter removed


def test_views_in_training_only_and_all_cached_by_prepare():
    class _DS:
        texts = [REPORT]

    rec, fake = _recipe(text_views=True)
    rec.prepare([_DS()])
    assert set(fake.seen) == set(report_views(REPORT, "impression"))
    fake.seen.clear()
    torch.manual_seed(0)
    rec.train()
    drawn = {rec.training_texts([REPORT])[0] for _ in range(60)}
    assert drawn == set(report_views(REPORT, "impression"))
    rec.eval()
    assert rec.training_texts([REPORT]) == ["Left acute infarct."]
    off, _ = _recipe()
    off.train()
    assert off.training_texts([REPORT]) == ["Left acute infarct."]


def test_text_adapter_starts_as_identity_and_trains():
    rec, _ = _recipe(text_adapter=True)
    plain, _ = _recipe()
    plain.text_proj.load_state_dict(rec.text_proj.state_dict())
    feats = torch.randn(3, 6)  # (B, Dt)
    assert torch.allclose(rec.project_text(feats), plain.project_text(feats))  # zero-initialised residual
    batch = {"image": torch.randn(2, 1, 8, 16, 16), "text": [REPORT, "Normal MRI brain."]}  # (B, C, D, H, W)
    rec.train()
    out = rec.training_step(batch)
    out["loss"].backward() if "loss" in out else sum(v for k, v in out.items() if k.endswith("_loss")).backward()
    assert rec.text_adapter[2].weight.grad is not None and rec.text_adapter[2].weight.grad.abs().sum() > 0
