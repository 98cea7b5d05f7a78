"""Issue 21, finding 3: `ssl label-efficiency` said nothing when it left out the default `clip` method,
and `ssl hlss-knn` ended with a raw JSON line. Both commands run here with their work faked."""
from __future__ import annotations

import json

import numpy as np

import medalign.experiments.hlss_knn as H
import medalign.experiments.label_efficiency as LE
from medalign.cli import main


def test_label_efficiency_says_clip_is_left_out(monkeypatch, tmp_path, capsys) -> None:
    seen = {}
    monkeypatch.setattr(LE, "_load_pneumoniamnist", lambda *a: {"train": {"x": np.zeros((2, 1, 4, 4))}})

    def fake_run(**kw):
        seen.update(kw)
        return {"results": {}}

    monkeypatch.setattr(LE, "run_label_efficiency", fake_run)
    assert main(["ssl", "label-efficiency", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: method 'clip' is left out: PneumoniaMNIST has no reports" in out
    assert seen["methods"] == ("scratch", "simclr", "micle", "clip")  # the report's notes still record it


def test_hlss_knn_prints_text_not_json(monkeypatch, tmp_path, capsys) -> None:
    ci = {"value": 0.5, "lo": 0.4, "hi": 0.6}
    monkeypatch.setattr(H, "hlss_knn", lambda run, **kw: {"levels": {"study": {
        "n_test": 4, "accuracy": ci, "balanced_accuracy": ci}}})
    assert main(["ssl", "hlss-knn", str(tmp_path), "--split", "test", "--cache", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"wrote {tmp_path / 'report_extras' / 'hlss_knn.json'}"
    for line in lines:
        try:
            json.loads(line)
            raise AssertionError(f"raw JSON printed: {line}")
        except ValueError:
            pass
