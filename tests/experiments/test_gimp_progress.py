"""Issue 21, finding 3: `gimp ablation` printed nothing for minutes and wrote nothing until every row
ended. Now each (row, seed) prints a progress line with an ETA and is written at once; a rerun after
a kill reuses the finished rows and trains only the rest."""
from __future__ import annotations

from pathlib import Path

import pytest

import medalign.experiments.gimp as G
from medalign.data.synth.omics import generate_omics_cohort

TINY = dict(dim=8, aggregator_kwargs={"heads": 1, "num_landmarks": 4}, pretrain_epochs=1, finetune_epochs=1,
            gene_epochs=1, batch_size=4, mpm_length=8)
ROWS = ["ABMIL (image only)", "SNN (gene only)"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("omics")
    return Path(generate_omics_cohort(root, n=24, feat_dim=8, n_genes=32, n_gene_groups=4, bag_min=8, bag_max=16))


def test_progress_eta_and_rows_written_at_once(manifest: Path, tmp_path: Path, monkeypatch) -> None:
    out, lines = tmp_path / "gimp", []
    real = G.run_gimp
    calls: list[str] = []

    def killed_on_second(cohort, **kw):
        calls.append(kw["aggregator"] or kw["gene_encoder"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the ablation during row 2
        return real(cohort, **kw)

    monkeypatch.setattr(G, "run_gimp", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        G.run_ablation(manifest, out, rows=ROWS, n_boot=10, tsne=False, log=lines.append, **TINY)
    assert len(list((out / "rows").glob("*.npz"))) == 1  # row 1 is on disk before row 2 ends
    assert lines[0].startswith("[1/2] ABMIL (image only) (seed 0): training")
    assert "[1/2] ABMIL (image only) (seed 0): accuracy" in lines[1] and "ETA" in lines[1]

    calls.clear()
    lines.clear()
    monkeypatch.setattr(G, "run_gimp", lambda cohort, **kw: calls.append(kw["gene_encoder"]) or real(cohort, **kw))
    res = G.run_ablation(manifest, out, rows=ROWS, n_boot=10, tsne=False, log=lines.append, **TINY)
    assert calls == ["snn"]  # only the unfinished row is trained again
    assert "reused from an earlier run" in lines[0] and lines[-1].endswith("done")
    assert [r[0] for r in res["table"]] == ROWS + ["Majority class (train)"]  # the reference accuracy
    # other settings: nothing is reused
    calls.clear()
    G.run_ablation(manifest, out, rows=ROWS[:1], n_boot=10, tsne=False, log=None, **{**TINY, "dim": 4})
    assert calls == [None]
