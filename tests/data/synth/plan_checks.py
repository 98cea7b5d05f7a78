"""A check shared by the tests of the ``synth brain`` finding options (issue 20): an option that adds keys to chosen
findings of chosen studies changes nothing else in the plan."""
from __future__ import annotations


def added_keys(base: list[dict], plan: list[dict], changed: set[str]) -> dict[str, list[dict]]:
    """The keys ``plan`` adds to each finding of the studies in ``changed`` ({study id: [added keys per finding]}),
    after asserting that every other study is byte for byte the ``base`` one and that, in the changed studies, each
    finding is the planned one plus those keys and every other key of the truth (report included) is unchanged."""
    out: dict[str, list[dict]] = {}
    for before, t in zip(base, plan, strict=True):
        if t["study_id"] not in changed:
            assert t == before
            continue
        out[t["study_id"]] = []
        for f0, f in zip(before["findings"], t["findings"], strict=True):
            assert {k: v for k, v in f.items() if k in f0} == f0
            out[t["study_id"]].append({k: v for k, v in f.items() if k not in f0})
        assert {k: v for k, v in t.items() if k != "findings"} == {k: v for k, v in before.items() if k != "findings"}
    return out
