"""ClipRecipe text views (label-preserving report views and generator paraphrases in training), the
manifest column that carries the paraphrases, and the optional text adapter."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from medalign.data.reports import label_report, report_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_runs import fake_text_clip_recipe as _recipe  # noqa: E402

REPORT = ("Indication: headache. Acute infarct in the left MCA territory. No haemorrhage. "
          "Incidental pineal cyst. IMPRESSION: Left acute infarct. Page 1 of 1")


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


# ---------------------------------------------------------------- generator paraphrases as text views
PARAS = ["Findings: Restricted diffusion left MCA c/w acute infarct.\nIMPRESSION: Acute left MCA infarct.",
         "There is an area of restricted diffusion in the left MCA territory, in keeping with an acute infarct.",
         "Normal MRI brain."]  # the last one names another class: the label check drops it
PARA_VIEWS = {"Acute left MCA infarct.",
              "There is an area of restricted diffusion in the left MCA territory, in keeping with an acute infarct."}


def test_report_views_add_label_preserving_paraphrases():
    own = report_views(REPORT, "impression")
    views = report_views(REPORT, "impression", paraphrases=PARAS)
    assert views[:len(own)] == own and set(views[len(own):]) == PARA_VIEWS  # after the report's own views
    assert report_views(REPORT, "impression", paraphrases=PARAS, label_preserving=False)[-1] == "Normal MRI brain."
    assert report_views("", paraphrases=["Acute infarct."]) == [""]  # no crash; "normal" report: infarct dropped


def test_paraphrases_are_views_in_training_only():
    class _DS:
        texts = [REPORT, "Normal MRI brain."]
        paraphrases = [PARAS, []]

    rec, fake = _recipe(text_views="paraphrases")
    rec.prepare([_DS()])
    own = set(report_views(REPORT, "impression"))
    assert set(fake.seen) == own | PARA_VIEWS | {"Normal MRI brain."}  # every view encoded once, up front
    torch.manual_seed(0)
    rec.train()
    drawn = {rec.training_texts([REPORT], [PARAS])[0] for _ in range(120)}
    assert drawn == own | PARA_VIEWS
    assert {rec.training_texts([REPORT])[0] for _ in range(60)} == own  # a manifest without the column
    rec.eval()
    assert rec.training_texts([REPORT], [PARAS]) == ["Left acute infarct."]  # never at evaluation
    sections, fake2 = _recipe(text_views="sections")  # the report's own views only
    sections.prepare([_DS()])
    assert not PARA_VIEWS & set(fake2.seen)
    sections.train()
    assert {sections.training_texts([REPORT], [PARAS])[0] for _ in range(60)} == own
    assert _recipe(text_views=True)[0].text_view_mode == "sections"
    assert _recipe(text_views=False)[0].text_view_mode == "none"
    with pytest.raises(ValueError, match="text_views"):
        _recipe(text_views="paraphrase")


def test_training_step_reads_the_batch_paraphrases():
    rec, fake = _recipe(text_views="paraphrases")
    rec.train()
    batch = {"image": torch.randn(2, 1, 8, 16, 16), "text": [REPORT, "Normal MRI brain."],  # (B, C, D, H, W)
             "paraphrases": [PARAS, []]}
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        fake.seen.clear()
        rec.training_step(batch)
        seen |= set(fake.seen)
    assert PARA_VIEWS & seen


class _FakeCache:
    def __init__(self, cache_dir):
        self.config = SimpleNamespace(sequences=("flair",))

    def __contains__(self, sid):
        return True

    def load(self, sid):
        return {"image": np.zeros((1, 8, 16, 16), np.float32), "sequence_mask": np.ones(1, bool), "mask": None}


def _manifest(path: Path, paraphrases: list[str] | None) -> Path:
    rows = [{"study_id": f"S{i}", "patient_id": f"P{i}", "split": "train" if i != 1 else "val", "label": "infarct",
             "report": REPORT, "image_flair": f"S{i}/flair.nii.gz"} for i in range(3)]
    df = pd.DataFrame(rows)
    if paraphrases is not None:
        df.insert(5, "report_paraphrases", paraphrases)
    df.to_csv(path, index=False)
    return path


def test_dataset_hands_paraphrases_to_the_recipe(tmp_path, monkeypatch):
    import medalign.data.datasets as D
    from medalign.data.datasets import CohortDataset, collate

    monkeypatch.setattr(D, "CohortCache", _FakeCache)
    cells = [json.dumps(PARAS), "", json.dumps(["Acute infarct, left MCA."])]
    ds = CohortDataset(_manifest(tmp_path / "m.csv", cells), tmp_path, split="train")
    assert ds.paraphrases == [PARAS, ["Acute infarct, left MCA."]]  # S0 and S2, aligned after the split
    batch = collate([ds[0], ds[1]])
    assert batch["paraphrases"] == [PARAS, ["Acute infarct, left MCA."]]
    rec, _ = _recipe(text_views="paraphrases")
    rec.prepare([ds])
    rec.train()
    torch.manual_seed(0)
    drawn = {t for _ in range(80) for t in rec.training_texts(batch["text"], batch["paraphrases"])}
    assert PARA_VIEWS | {"Acute infarct, left MCA."} <= drawn
    plain = CohortDataset(_manifest(tmp_path / "plain.csv", None), tmp_path, split="train")  # no column: unchanged
    assert plain.paraphrases is None and "paraphrases" not in plain[0] and "paraphrases" not in collate([plain[0]])


@pytest.mark.parametrize("cell, why", [("Acute infarct.", "not a JSON list"), ('{"a": "b"}', "got dict"),
                                       ('["ok", 3]', "non-text item")])
def test_malformed_paraphrases_name_the_row(tmp_path, monkeypatch, cell, why):
    import medalign.data.datasets as D
    from medalign.data.datasets import CohortDataset
    from medalign.data.manifest import load_manifest
    from medalign.errors import CohortError

    monkeypatch.setattr(D, "CohortCache", _FakeCache)
    m = _manifest(tmp_path / "bad.csv", ["[]", cell, "[]"])
    for load in (lambda: load_manifest(m, check_files=False),
                 lambda: CohortDataset(pd.read_csv(m, dtype=str, keep_default_na=False), tmp_path, split="train")):
        with pytest.raises(CohortError) as e:
            load()
        msg = str(e.value)
        assert "row 2" in msg and "report_paraphrases" in msg and "S1" in msg and why in msg and "\n" not in msg
