"""Issue 20: the neighbour readout of ``classify`` (``neighbours=w``: the vote of the k nearest training studies
with the same sequences, blended with zero-shot), its bank kept beside the run, its pure vote, and test-time
left-right mirroring (``mirror``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalign.cli import main
from medalign.errors import MedAlignError
from medalign.eval.neighbours import bank_path, load_bank, neighbour_vote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_classify import run  # noqa: E402,F401  (a tiny run on 6 labelled dwi+flair studies; s00-s03 train, 1 per class)


def test_vote_shares_calls_and_the_tie_break():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])  # (M, E)
    labels = ["tumor", "tumor", "others", "others", "others"]
    classes = ["tumor", "others", "normal"]
    q = np.array([[5.0, 0.2], [0.1, 1.0], [0.5, 0.5]])  # length does not matter, direction does
    shares, calls, top = neighbour_vote(q, bank, labels, classes, k=2)
    assert shares.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]
    assert top[0].tolist() == [0, 1] and top[1].tolist() == [3, 2]
    # query 3 is tied 1-1 between bank rows 4 (others, cos 0.86) and 1 (tumor, 0.78): the nearer's class, not the
    # first column's
    assert [classes[c] for c in calls] == ["tumor", "others", "others"] and top[2].tolist() == [4, 1]
    shares, calls, _ = neighbour_vote(q, bank, labels, classes, k=99)  # every bank row votes
    assert np.allclose(shares, [[0.4, 0.6, 0.0]] * 3) and (calls == 1).all()
    with pytest.raises(MedAlignError, match=r"k must be >= 1"):
        neighbour_vote(q, bank, labels, classes, k=0)
    with pytest.raises(MedAlignError, match=r"labels \['stroke'\] are not among the classes"):
        neighbour_vote(q, bank, labels[:4] + ["stroke"], classes, k=2)


@pytest.fixture(scope="module")
def labelled(run) -> dict:
    """test_classify's tiny trained run, with its manifest's label per study id."""
    return {**run, "labels": dict(pd.read_csv(run["manifest"])[["study_id", "label"]].values)}


def _files(root: Path, sid: str, seqs=("dwi", "flair")) -> dict[str, str]:
    return {s: str(root / "a" / sid / f"{s}.nii.gz") for s in seqs}


def test_the_vote_alone_reads_the_training_studies(labelled) -> None:
    """k = 4 of the 4 training studies (one per class): every class 1/4, the call the nearest's class; k = 1 on a
    training study itself: its own class, itself nearest; the FLAIR-only study meets the training FLAIRs alone."""
    import medalign

    m = medalign.load(labelled["run"])
    res = m.classify([_files(labelled["root"], "s04"), _files(labelled["root"], "s05", ("flair",))], neighbours=1.0, k=4)
    for r in res:
        assert sorted(v for v in r["probabilities"].values() if v > 0) == [0.25] * 4
        assert len(r["nearest"]) == 4 and {labelled["labels"][s] for s in r["nearest"]} == {"infarct", "tumor", "hemorrhage", "normal"}
        assert r["label"] == labelled["labels"][r["nearest"][0]] and (r["neighbours"], r["k"]) == (1.0, 4)
    full, flair = (bank_path(labelled["run"], m.model_id, v) for v in (("dwi", "flair"), ("flair",)))
    assert full.is_file() and flair.is_file()
    b = load_bank(m, ("flair",))
    assert b["study_ids"] == ["s00", "s01", "s02", "s03"] and b["split"] == "train"
    direct = m.encode_image([_files(labelled["root"], s, ("flair",)) for s in b["study_ids"]])
    assert np.allclose(b["embeddings"], direct, atol=1e-5)  # each training study through its FLAIR alone
    own = m.classify(_files(labelled["root"], "s02"), neighbours=1.0, k=1)[0]
    assert own["nearest"][0] == "s02" and own["label"] == labelled["labels"]["s02"]


def test_the_blend_weights_the_vote_against_zero_shot(labelled) -> None:
    import medalign

    m = medalign.load(labelled["run"])
    study = _files(labelled["root"], "s05")
    zs = m.classify(study)[0]
    blend = m.classify(study, neighbours=0.25, k=1)[0]
    assert "nearest" not in zs
    own = labelled["labels"][blend["nearest"][0]]
    for c, p in blend["probabilities"].items():
        assert p == pytest.approx(0.25 * (c == own) + 0.75 * zs["probabilities"][c], abs=1e-6)
    assert blend["label"] == max(blend["probabilities"], key=blend["probabilities"].get)
    with pytest.raises(MedAlignError, match=r"weight in \[0, 1\], got 1.5"):
        m.classify(study, neighbours=1.5)


def test_the_bank_is_kept_and_rebuilt_for_another_manifest(labelled, tmp_path, monkeypatch) -> None:
    """A second call reads the kept bank (encoding nothing of the training studies); --bank with another manifest
    builds that one's, and again once that file is edited; a manifest without a train split, or missing, is a
    one-line error naming it."""
    import medalign

    m = medalign.load(labelled["run"])
    study = _files(labelled["root"], "s04")
    m.classify(study, neighbours=0.5, k=2)
    seen = []
    real = type(m)._encode  # every image the model encodes passes here, the study's and the bank's
    monkeypatch.setattr(type(m), "_encode", lambda self, images, *a, **kw: seen.append(len(images)) or real(self, images, *a, **kw))
    m.classify(study, neighbours=0.5, k=2)
    assert seen == [1]  # the study only: the bank was read from disk
    df = pd.read_csv(labelled["manifest"])
    other = tmp_path / "other.csv"
    df.assign(split="train", image_dwi=labelled["root"] / "a" / df["image_dwi"],
              image_flair=labelled["root"] / "a" / df["image_flair"]).to_csv(other, index=False)
    r = m.classify(study, neighbours=1.0, k=6, bank=other)[0]
    assert seen[-1] == 6 and r["nearest"][0] == "s04"  # all six studies vote now, the study itself among them
    pd.read_csv(other).iloc[:5].to_csv(other, index=False)  # the same file edited: its bank is built afresh
    r = m.classify(study, neighbours=1.0, k=6, bank=other)[0]
    assert seen[-1] == 5 and len(r["nearest"]) == 5 and "s05" not in r["nearest"]
    df.assign(split="test").to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(MedAlignError, match=r"none.csv: no labelled 'train' study"):
        m.classify(study, neighbours=1.0, bank=tmp_path / "none.csv")
    with pytest.raises(MedAlignError, match=r"gone.csv: the training manifest is not there"):
        m.classify(study, neighbours=1.0, bank=tmp_path / "gone.csv")


def test_cli_classify_with_neighbours(labelled, tmp_path, capsys) -> None:
    out = tmp_path / "res.json"
    assert main(["classify", str(labelled["run"]), "--images", f"flair={_files(labelled['root'], 's05')['flair']}",
                 "--neighbours", "1", "--k", "4", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "with the vote of the 4 nearest training studies at weight 1" in said
    res = json.loads(out.read_text(encoding="utf-8"))
    assert len(res) == 1 and len(res[0]["nearest"]) == 4 and res[0]["neighbours"] == 1.0


def test_the_runs_readout_is_classifys_default(labelled) -> None:
    """A run trained with ``readout: {neighbours, k}`` is read that way unless told otherwise; runs without it (every
    run before stop 70) read zero-shot."""
    import medalign

    m = medalign.load(labelled["run"])
    study = _files(labelled["root"], "s05")
    assert "nearest" not in m.classify(study)[0] and m.config["readout"] == {"neighbours": 0.0, "k": 20, "mirror": False}
    m.config["readout"] = {"neighbours": 1.0, "k": 4}
    r = m.classify(study)[0]
    assert (r["neighbours"], r["k"], len(r["nearest"])) == (1.0, 4, 4)
    assert "nearest" not in m.classify(study, neighbours=0.0)[0]
    del m.config["readout"]
    assert "nearest" not in m.classify(study)[0]


def test_mirroring_reads_the_mean_with_the_mirror_and_is_side_free(labelled) -> None:
    """``mirror``: each embedding is the normalised mean of the study's and its left-right mirror's (W, the last axis),
    so a study and its mirror image read the same, while unmirrored they do not; other layouts are refused."""
    import torch
    import torch.nn.functional as F

    import medalign

    m = medalign.load(labelled["run"])
    image, mask = m._one(_files(labelled["root"], "s04"))  # (C, D, H, W), (C,)
    image = image.clone()
    image[:, :, :, : image.shape[-1] // 2] *= 1.5  # one side brighter: the study is not its own mirror
    flipped = image.flip(-1)
    plain, plain_flipped = (m.encode_image(x, mask.numpy()) for x in (image, flipped))
    assert not np.allclose(plain, plain_flipped, atol=1e-3)
    mean, mean_flipped = (m.encode_image(x, mask.numpy(), mirror=True) for x in (image, flipped))
    assert np.allclose(mean, mean_flipped, atol=1e-5)
    expect = F.normalize(torch.from_numpy(plain + plain_flipped), dim=-1).numpy()
    assert np.allclose(mean, expect, atol=1e-5) and np.allclose(np.linalg.norm(mean, axis=1), 1.0, atol=1e-5)
    with pytest.raises(MedAlignError, match=r"left-right axis of a 3D volume .* \(1, 8, 8\): read it with mirror off"):
        m._encode([torch.zeros(1, 8, 8)], [mask[:1]], mirror=True)


def test_the_mirrored_readout_has_its_own_bank_and_is_the_runs_default_when_set(labelled, tmp_path, capsys) -> None:
    """classify(mirror=True): zero-shot on the mirrored embedding, and the vote of a bank built mirrored, kept in its
    own file beside the plain one; a run whose readout sets ``mirror`` reads so unless told otherwise (CLI: --mirror /
    --no-mirror), and a readout.mirror that is not a boolean is a one-line config error."""
    import medalign
    from medalign.config import ConfigError
    from medalign.train.config import ReadoutConfig

    m = medalign.load(labelled["run"])
    study = _files(labelled["root"], "s05")
    r = m.classify(study, neighbours=1.0, k=1, mirror=True)[0]
    plain_bank, mirrored_bank = (bank_path(labelled["run"], m.model_id, ("dwi", "flair"), mi) for mi in (False, True))
    assert mirrored_bank.is_file() and mirrored_bank != plain_bank and r["mirror"] is True
    b = load_bank(m, ("dwi", "flair"), mirror=True)
    direct = m.encode_image([_files(labelled["root"], s) for s in b["study_ids"]], mirror=True)
    assert b["mirror"] is True and np.allclose(b["embeddings"], direct, atol=1e-5)
    q = m.encode_image(study, mirror=True)
    assert r["nearest"][0] == b["study_ids"][int(np.argmax(b["embeddings"] @ q[0]))]
    classes, p = m.zero_shot_probabilities(q)
    zs = m.classify(study, mirror=True)[0]
    assert np.allclose([zs["probabilities"][c] for c in classes], p[0], atol=1e-6)
    assert m.classify(study)[0]["mirror"] is False
    m.config["readout"] = {"neighbours": 0.0, "k": 20, "mirror": True}
    assert m.classify(study)[0]["mirror"] is True and m.classify(study, mirror=False)[0]["mirror"] is False
    flair = f"flair={_files(labelled['root'], 's05')['flair']}"
    assert main(["classify", str(labelled["run"]), "--images", flair, "--mirror"]) == 0
    assert "each embedding the mean with its left-right mirror" in capsys.readouterr().out
    assert main(["classify", str(labelled["run"]), "--images", flair, "--no-mirror"]) == 0
    assert "mirror" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"readout.mirror: expected true or false, got 'yes'"):
        ReadoutConfig.from_dict({"mirror": "yes"})
