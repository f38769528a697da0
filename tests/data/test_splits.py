from __future__ import annotations

import json

import pytest

from seg.data.splits import SplitError, load_or_create_splits, make_splits, validate_splits

IDS = [f"c{i:02d}" for i in range(23)]


def test_splits_partition_and_are_deterministic():
    a = make_splits(IDS, 5, seed=1)
    assert a == make_splits(IDS, 5, seed=1)
    assert a != make_splits(IDS, 5, seed=2)
    vals = [c for f in a for c in f["val"]]
    assert sorted(vals) == sorted(IDS)  # every case validated exactly once
    for f in a:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(IDS)
        assert len(f["val"]) in (4, 5)


def test_groups_stay_together_and_strata_balance():
    groups = {c: f"s{i // 2}" for i, c in enumerate(IDS)}  # two cases per subject
    strata = {c: int(i % 3 == 0) for i, c in enumerate(IDS)}
    splits = make_splits(IDS, 4, seed=0, groups=groups, strata=strata)
    for f in splits:
        subjects_val = {groups[c] for c in f["val"]}
        subjects_train = {groups[c] for c in f["train"]}
        assert not subjects_val & subjects_train
    per_fold = [sum(strata[c] for c in f["val"]) for f in splits]
    assert max(per_fold) - min(per_fold) <= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strata_balance_exactly_without_groups(seed):
    # each stratum's cases spread over the folds as evenly as they can (counts differ by at most 1), and
    # the fold sizes too: a round-robin per stratum that continues across strata
    ids = IDS[:15]  # three strata of 5 over 4 folds: restarting the round-robin per stratum would give 6,3,3,3
    strata = {c: i % 3 for i, c in enumerate(ids)}
    splits = make_splits(ids, 4, seed=seed, strata=strata)
    for s in range(3):
        counts = [sum(strata[c] == s for c in f["val"]) for f in splits]
        assert max(counts) - min(counts) <= 1, (s, counts)
    sizes = [len(f["val"]) for f in splits]
    assert max(sizes) - min(sizes) <= 1


def test_overlap_is_an_error_and_file_is_reused(tmp_path):
    bad = [{"train": ["a", "b"], "val": ["b"]}]
    with pytest.raises(SplitError, match="both train and val"):
        validate_splits(bad)
    p = tmp_path / "splits.json"
    s1 = load_or_create_splits(p, IDS, 3, seed=0)
    edited = [{"train": IDS[5:], "val": IDS[:5]}]
    p.write_text(json.dumps(edited))  # edited by hand: reused as is
    assert load_or_create_splits(p, IDS, 3, seed=0) == edited != s1
    p.write_text(json.dumps([{"train": IDS[1:], "val": ["zzz"]}]))
    with pytest.raises(SplitError, match="not in the dataset"):
        load_or_create_splits(p, IDS, 3)
