import numpy as np
import pytest

from medalign.data.schema import CLASSES
from medalign.eval.zeroshot import (
    classification_metrics,
    confusion_matrix,
    embed_prompts,
    load_prompts,
    scores_from_prompt_bank,
    zero_shot_scores,
)


def test_prompts_file_covers_every_class():
    p = load_prompts()
    assert list(p) == list(CLASSES)
    assert all(len(v["presence"]) >= 2 for v in p.values())
    assert p["normal"]["presence"][0] == "Normal MRI brain."
    one = load_prompts(one_per_class=True)
    assert all(len(v["presence"]) == 1 and not v["absence"] for v in one.values())


def test_pooling_mean_vs_max_hand_computed():
    img = np.array([[1.0, 0.0]])
    # class 0 prompts: cos 1 and cos 0 -> mean .5 max 1; class 1: cos .6 (0.6,0.8)
    pres = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8]])]
    assert zero_shot_scores(img, pres, pool="mean") == pytest.approx(np.array([[0.5, 0.6]]))
    assert zero_shot_scores(img, pres, pool="max") == pytest.approx(np.array([[1.0, 0.6]]))
    absn = [np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])]
    assert zero_shot_scores(img, pres, absence=absn, pool="max") == pytest.approx(np.array([[1.0, -0.4]]))
    with pytest.raises(ValueError, match="unknown pool"):
        zero_shot_scores(img, pres, pool="median")


def test_prompt_bank_round_trip():
    prompts = {"a": {"presence": ["pa1", "pa2"], "absence": ["na"]}, "b": {"presence": ["pb"], "absence": []}}
    table = {"pa1": [1, 0], "pa2": [0, 1], "na": [1, 0], "pb": [1, 1]}
    bank = embed_prompts(prompts, lambda ts: np.array([table[t] for t in ts], float))
    assert bank["texts"].tolist() == ["pa1", "pa2", "na", "pb"]
    img = np.array([[1.0, 0.0]])
    s = scores_from_prompt_bank(img, bank, pool="mean")
    assert s == pytest.approx(np.array([[0.5, np.sqrt(0.5)]]))
    s1 = scores_from_prompt_bank(img, bank, one_per_class=True)
    assert s1 == pytest.approx(np.array([[1.0, np.sqrt(0.5)]]))
    s2 = scores_from_prompt_bank(img, bank, absence="subtract", pool="mean")
    assert s2 == pytest.approx(np.array([[-0.5, np.sqrt(0.5)]]))


def test_prompt_ensemble_is_the_default_and_differs_from_mean_of_scores():
    prompts = {"a": {"presence": ["pa1", "pa2"]}, "b": {"presence": ["pb1", "pb2"]}}
    table = {"pa1": [1, 0, 0], "pa2": [0, 1, 0], "pb1": [0.8, 0.6, 0], "pb2": [0.8, 0.6, 0]}
    bank = embed_prompts(prompts, lambda ts: np.array([table[t] for t in ts], float))
    img = np.array([[0.8, 0.6, 0.0]])
    # mean of scores: a = (0.8 + 0.6) / 2 = 0.7, b = 1.0; ensemble: a = cos(img, (1, 1, 0)/sqrt 2) = 1.4/sqrt 2
    assert scores_from_prompt_bank(img, bank, pool="mean") == pytest.approx(np.array([[0.7, 1.0]]))
    assert scores_from_prompt_bank(img, bank) == pytest.approx(np.array([[1.4 / np.sqrt(2), 1.0]]))
    img2 = np.array([[1.0, 1.0, 0.3]])  # mean-of-scores picks b, the ensemble picks a
    assert scores_from_prompt_bank(img2, bank, pool="mean").argmax() == 1
    assert scores_from_prompt_bank(img2, bank, pool="ensemble").argmax() == 0


def test_classification_metrics_hand_computed():
    y = [0, 0, 1, 1, 2]
    scores = np.array([
        [0.9, 0.1, 0.0],  # -> 0 correct
        [0.2, 0.7, 0.1],  # -> 1 wrong
        [0.1, 0.8, 0.1],  # -> 1 correct
        [0.1, 0.6, 0.3],  # -> 1 correct
        [0.3, 0.2, 0.5],  # -> 2 correct
    ])
    m = classification_metrics(y, scores, class_names=["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: a: tp1 fp0 fn1 -> 2/3; b: tp2 fp1 fn0 -> 4/5; c: 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # AUROC class a: positives scores .9,.2 vs negatives .1,.1,.3 -> pairs won 3 + 2 = 5/6
    assert m["auroc"]["a"] == pytest.approx(5 / 6)
    assert m["auroc"]["c"] == pytest.approx(1.0)


def test_absent_class_auroc_is_none():
    m = classification_metrics([0, 1], np.array([[1, 0, 0], [0, 1, 0]]), n_classes=3)
    assert m["auroc"]["2"] is None and m["auroc_macro"] == 1.0
    assert confusion_matrix([0, 1], [1, 1], 2).tolist() == [[0, 1], [0, 1]]


def test_binary_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from medalign.eval.zeroshot import binary_auroc

    rng = np.random.default_rng(0)
    pos = rng.random(40) < 0.3
    score = np.round(rng.random(40), 1)  # many ties
    assert binary_auroc(pos, score) == pytest.approx(roc_auc_score(pos, score))
    assert binary_auroc(np.ones(3, bool), np.arange(3)) is None


def _subclass_yaml(tmp_path, others: str) -> str:
    body = "".join(f"{c}:\n  presence: ['{c} prompt']\n" for c in CLASSES if c != "others") + others
    p = tmp_path / "prompts.yaml"
    p.write_text(body, encoding="utf-8")
    return str(p)


def test_subclasses_load_as_grouped_presence_prompts(tmp_path):
    path = _subclass_yaml(tmp_path, "others:\n  subclasses:\n    svd: ['Small vessel disease.', 'white matter lesions']\n"
                                    "    atrophy: ['Atrophy.']\n  absence: ['no other abnormality']\n")
    p = load_prompts(path)
    assert p["others"] == {"presence": ["Small vessel disease.", "white matter lesions", "Atrophy."],
                           "absence": ["no other abnormality"], "groups": [0, 0, 1]}
    assert "groups" not in p["tumor"]
    assert load_prompts(path, one_per_class=True)["others"] == {"presence": ["Small vessel disease."], "absence": []}
    from medalign.errors import MedAlignError

    for bad, why in (("others:\n  presence: ['x']\n  subclasses: {a: ['y']}\n", "not both"),
                     ("others:\n  subclasses: {}\n", "not both"),
                     ("others:\n  subclasses:\n    svd: []\n", "subclass 'svd' has no prompts")):
        with pytest.raises(MedAlignError, match=why):
            load_prompts(_subclass_yaml(tmp_path, bad))


def test_a_class_with_subclasses_scores_the_max_of_their_ensembles():
    prompts = {"a": {"presence": ["a1", "a2", "a3"], "absence": [], "groups": [0, 0, 1]},
               "b": {"presence": ["b1"], "absence": []}}
    table = {"a1": [1, 0, 0], "a2": [0, 1, 0], "a3": [0, 0, 1], "b1": [0.6, 0.8, 0]}
    bank = embed_prompts(prompts, lambda ts: np.array([table[t] for t in ts], float))
    assert bank["group"].tolist() == [0, 0, 1, 0]
    img = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]) / np.array([[1.0], [np.sqrt(2)]])
    # row 0: subclass 1 (a3) matches exactly, while the class mean (1, 1, 1)/sqrt 3 gives 1/sqrt 3
    # row 1: subclass 0's ensemble (1, 1, 0)/sqrt 2 matches exactly
    assert scores_from_prompt_bank(img, bank) == pytest.approx(np.array([[1.0, 0.0], [1.0, 1.4 / np.sqrt(2)]]))
    flat = {**prompts, "a": {k: v for k, v in prompts["a"].items() if k != "groups"}}
    flat_bank = embed_prompts(flat, lambda ts: np.array([table[t] for t in ts], float))
    assert scores_from_prompt_bank(img, flat_bank)[0, 0] == pytest.approx(1 / np.sqrt(3))
    # max pooling of scores within each subclass, then the max over subclasses: the max over all prompts
    assert scores_from_prompt_bank(img, bank, pool="max") == pytest.approx(scores_from_prompt_bank(img, flat_bank, pool="max"))
    bank_without_groups = {k: v for k, v in flat_bank.items() if k != "group"}  # a bank made before subclasses
    assert scores_from_prompt_bank(img, bank_without_groups) == pytest.approx(scores_from_prompt_bank(img, flat_bank))
