"""Known-value tests for retrieval metrics."""
import numpy as np
import pytest

from medalign.eval.retrieval import (
    case_retrieval,
    class_precision_at_k,
    cosine_similarity,
    cross_modal_retrieval,
    match_ranks,
    rank_summary,
)


def test_identical_embeddings_give_recall_at_1_of_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    ids = [f"s{i}" for i in range(20)]
    res = cross_modal_retrieval(x, x.copy(), ids)
    for d in ("text_to_image", "image_to_text"):
        assert res[d]["R@1"] == 1.0
        assert res[d]["MRR"] == 1.0
        assert res[d]["median_rank"] == 1.0
        assert res[d]["pool_size"] == 20


def test_shuffled_embeddings_give_chance_level():
    rng = np.random.default_rng(1)
    n, trials = 30, 300
    ids = [f"s{i}" for i in range(n)]
    r1, r5, mean_rank = [], [], []
    for _ in range(trials):
        x = rng.normal(size=(n, 16))
        t = x[rng.permutation(n)]  # texts paired with the wrong images
        res = cross_modal_retrieval(x, t, ids)["text_to_image"]
        r1.append(res["R@1"]), r5.append(res["R@5"]), mean_rank.append(res["mean_rank"])
    # chance: R@k = k / N, mean rank = (N + 1) / 2
    assert abs(np.mean(r1) - 1 / n) < 0.01
    assert abs(np.mean(r5) - 5 / n) < 0.02
    assert abs(np.mean(mean_rank) - (n + 1) / 2) < 1.0


def test_hand_computed_ranks_and_summary():
    # 3 queries x 4 candidates; ids match by study id, not position
    sim = np.array([
        [0.9, 0.1, 0.2, 0.3],   # q 'a' -> cand 'a' (col 0) best: rank 1
        [0.5, 0.4, 0.6, 0.1],   # q 'b' -> cand 'b' (col 1) 0.4: 0.5 and 0.6 above -> rank 3
        [0.2, 0.2, 0.2, 0.2],   # q 'd' -> cand 'd' (col 3) tie with all -> pessimistic rank 4
    ])
    ranks, true_sim = match_ranks(sim, ["a", "b", "d"], ["a", "b", "c", "d"])
    assert ranks.tolist() == [1, 3, 4]
    assert true_sim.tolist() == [0.9, 0.4, 0.2]
    s = rank_summary(ranks, ks=(1, 3), pool_size=4)
    assert s["R@1"] == pytest.approx(1 / 3)
    assert s["R@3"] == pytest.approx(2 / 3)
    assert s["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert s["median_rank"] == 3.0
    assert s["mean_rank"] == pytest.approx(8 / 3)
    assert s["chance_R@1"] == 0.25


def test_matching_is_by_study_id_not_report_string():
    # two studies share a report string; the ids still decide which image is right
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.0, 1.0], [1.0, 0.0]])  # text of s0 looks like image s1
    res = cross_modal_retrieval(img, txt, ["s0", "s1"])
    assert res["text_to_image"]["R@1"] == 0.0
    assert res["text_to_image"]["ranks"] == [2, 2]


def test_missing_match_names_the_study():
    with pytest.raises(ValueError, match="study 'zz'"):
        match_ranks(np.zeros((1, 2)), ["zz"], ["a", "b"])


def test_class_precision_at_k_hand_computed():
    sim = np.array([[0.9, 0.8, 0.1], [0.1, 0.9, 0.8]])
    p = class_precision_at_k(sim, ["x", "y"], ["x", "y", "x"], ks=(1, 2))
    # q0 top [0,1] classes [x,y] -> P@1=1, P@2=.5; q1 top [1,2] -> [y,x] -> P@1=1, P@2=.5
    assert p == {"P@1": 1.0, "P@2": 0.5}


def test_case_retrieval_excludes_self():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]])
    labels = ["a", "a", "b", "b", "c"]  # 'c' has no other member -> skipped
    res = case_retrieval(emb, labels, ks=(1,))
    assert res["R@1"] == 1.0 and res["P@1"] == 1.0
    assert res["n_skipped"] == 1 and res["pool_size"] == 4


def test_cosine_similarity_shape_error():
    with pytest.raises(ValueError, match="embedding sizes differ"):
        cosine_similarity(np.zeros((2, 3)), np.zeros((2, 4)))


def test_case_retrieval_with_no_same_class_pairs_is_skipped_not_crashing():
    import numpy as np

    from medalign.eval.retrieval import case_retrieval

    emb = np.eye(3, dtype=np.float32)
    res = case_retrieval(emb, np.array([0, 1, 2]))
    assert "skipped" in res and res["pool_size"] == 2
