"""PatientBatchSampler and within-patient pairing."""
from collections import Counter

import pytest

from medalign.data.samplers import PatientBatchSampler, pair_within_patient


def _pids():
    # 6 patients with 2..4 studies, one singleton patient "z".
    return ["a"] * 2 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2 + ["e"] * 2 + ["f"] * 3 + ["z"]


def test_every_patient_in_batch_has_two_distinct_instances():
    pids = _pids()
    with pytest.warns(UserWarning, match="fewer than 2"):
        s = PatientBatchSampler(pids, batch_size=6, instances_per_patient=2, seed=3)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len(b) == 6 and len(set(b)) == 6
        counts = Counter(pids[i] for i in b)
        assert all(c >= 2 for c in counts.values()) and len(counts) == 3
        assert "z" not in counts


def test_all_instances_covered_without_drop_last():
    pids = _pids()[:-1]
    s = PatientBatchSampler(pids, batch_size=4, shuffle=False, drop_last=False)
    seen = {i for b in s for i in b}
    assert seen == set(range(len(pids)))


def test_epoch_changes_order_and_is_reproducible():
    pids = _pids()[:-1]
    s = PatientBatchSampler(pids, batch_size=4, seed=0)
    e0 = list(s)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0


def test_ddp_shards_are_disjoint_and_equal():
    pids = [f"p{i // 2}" for i in range(40)]
    r0 = list(PatientBatchSampler(pids, batch_size=4, num_replicas=2, rank=0))
    r1 = list(PatientBatchSampler(pids, batch_size=4, num_replicas=2, rank=1))
    assert len(r0) == len(r1) == 5
    assert not ({i for b in r0 for i in b} & {i for b in r1 for i in b})


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        PatientBatchSampler(["a", "a", "b", "b"], batch_size=3)
    with pytest.raises(ValueError, match=">= 2 patients"), pytest.warns(UserWarning, match="left out"):
        PatientBatchSampler(["a", "a", "b"], batch_size=4, min_instances=2)
    with pytest.raises(ValueError, match="instances_per_patient"):
        PatientBatchSampler(["a", "a"], batch_size=4, instances_per_patient=1)


def test_pair_within_patient():
    pids = ["a", "b", "a", "c", "b", "a"]
    anchors, partners = pair_within_patient(pids, seed=0)
    for a, p in zip(anchors, partners):
        assert pids[a] == pids[p]
        assert a != p or pids.count(pids[a]) == 1
    assert set(anchors) | set(partners) == set(range(6))
    assert (3, 3) in set(zip(anchors, partners))  # the singleton "c" falls back to itself


class _Labelled:
    def __init__(self, labels, ids=None):
        self.labels, self.study_ids = labels, ids


def test_class_balance_weights_and_draws():
    from medalign.data.samplers import ResumableBatchSampler, class_balance_weights

    labels = [0] * 80 + [1] * 16 + [2] * 4  # 80 / 16 / 4 studies
    w = class_balance_weights(_Labelled(labels), 1.0)
    assert w[0] == pytest.approx(1 / 80) and w[-1] == pytest.approx(1 / 4)
    s = ResumableBatchSampler(len(labels), 10, seed=3, weights=w)
    drawn = Counter()
    for epoch in range(40):
        s.set_epoch(epoch)
        drawn.update(labels[i] for b in s for i in b)
    share = {k: v / sum(drawn.values()) for k, v in drawn.items()}
    # balanced: each class about a third of the draws (shuffled: 0.80 / 0.16 / 0.04)
    assert all(abs(share[k] - 1 / 3) < 0.05 for k in (0, 1, 2)), share
    half = class_balance_weights(_Labelled(labels), 0.5)  # inverse square root: 80^0.5 : 16^0.5 : 4^0.5
    assert half[0] * 80 / (half[-1] * 4) == pytest.approx((80 / 4) ** 0.5)
    # the same (seed, epoch) gives the same batches, so a resumed run sees what the killed one would have
    s.set_epoch(7)
    again = ResumableBatchSampler(len(labels), 10, seed=3, weights=w)
    again.set_epoch(7, start_batch=2)
    assert list(again) == list(s)[2:]


def test_class_balance_needs_labels():
    from medalign.config import ConfigError
    from medalign.data.samplers import ResumableBatchSampler, class_balance_weights

    with pytest.raises(ConfigError, match="first: s2"):
        class_balance_weights(_Labelled([0, 1, -1, -1], ["s0", "s1", "s2", "s3"]), 1.0)
    with pytest.raises(ConfigError, match="no labels"):
        class_balance_weights(object(), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        ResumableBatchSampler(3, 2, weights=[1.0, -1.0, 1.0])


class _Acquired(_Labelled):
    def __init__(self, labels, protocols):
        super().__init__(labels)
        self.protocols = protocols


def test_protocol_balance_weights_and_draws():
    from medalign.config import ConfigError
    from medalign.data.samplers import ResumableBatchSampler, protocol_balance_weights, sampling_weights

    # 75 studies as FLAIR alone, 25 with three sequences; classes 0/1 spread over both
    protocols = [("flair",)] * 75 + [("dwi", "t2s", "flair")] * 25
    labels = [i % 2 for i in range(75)] + [0] * 20 + [1] * 5
    ds = _Acquired(labels, protocols)
    w = protocol_balance_weights(ds, 1.0)
    assert w[0] == pytest.approx(1 / 75) and w[-1] == pytest.approx(1 / 25)
    s = ResumableBatchSampler(len(labels), 10, seed=4, weights=w)
    drawn = Counter()
    for epoch in range(40):
        s.set_epoch(epoch)
        drawn.update(len(protocols[i]) for b in s for i in b)
    multi = drawn[3] / sum(drawn.values())
    assert abs(multi - 0.5) < 0.05, multi  # shuffled: 0.25
    assert sampling_weights(ds) is None  # neither asked: a plain shuffle
    assert sampling_weights(ds, protocol_balance=1.0) == w
    both = sampling_weights(ds, class_balance=1.0, protocol_balance=1.0)
    # the product: a class-1 study with three sequences (rare class, rare protocol) weighs most
    n1 = labels.count(1)
    assert both[-1] == pytest.approx(1 / 25 / n1) and both[0] == pytest.approx(1 / 75 / labels.count(0))
    with pytest.raises(ConfigError, match="train.protocol_balance"):
        protocol_balance_weights(_Labelled(labels), 1.0)


def test_grouped_batches_keep_patients_together_and_see_every_study():
    from medalign.data.samplers import GroupedBatchSampler

    # 20 single-study patients and 6 with a study and its twin, shuffled in the manifest
    pids = [f"s{i}" for i in range(20)] + [f"t{i}" for i in range(6)] * 2
    s = GroupedBatchSampler(pids, 8, seed=1, drop_last=False)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(pids)))  # every study once
    for b in batches:
        assert len(b) <= 8
        for i in b:  # a twin sits next to its study
            if pids[i].startswith("t"):
                pair = [j for j in b if pids[j] == pids[i]]
                assert len(pair) == 2 and abs(b.index(pair[0]) - b.index(pair[1])) == 1
    s.set_epoch(1)
    assert list(s) != batches  # reshuffled per epoch
    s.set_epoch(0, start_batch=2)
    assert list(s) == batches[2:]  # resumes mid-epoch with the same batches


def test_grouped_batches_shard_evenly():
    from medalign.data.samplers import GroupedBatchSampler

    pids = [f"s{i}" for i in range(23)] + ["t0", "t0"]
    shards = [list(GroupedBatchSampler(pids, 4, seed=0, rank=r, world=2, drop_last=False)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) > 0
    assert {i for sh in shards for b in sh for i in b} == set(range(len(pids)))
