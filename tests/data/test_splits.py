"""Patient-level splits and nested label fractions: property tests of the invariants users rely on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cxrbench.data.splits import assign_splits, fraction_patients, parse_ratios, patient_unit
from cxrbench.errors import CxrbenchError

patient_ids = st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=8)
# rows as patient ids, several rows per patient allowed
rows = st.lists(patient_ids, min_size=1, max_size=60)
seeds = st.integers(min_value=0, max_value=2**31)
ratio_sets = st.tuples(st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(
    lambda r: tuple(v / sum(r) for v in r)
)

FAST = settings(max_examples=60, deadline=None)


def _by_patient(pids, splits) -> dict[str, str]:
    out: dict[str, str] = {}
    for pid, split in zip(pids, splits, strict=True):
        assert out.setdefault(pid, split) == split, f"patient {pid} in two splits"
    return out


@FAST
@given(rows, seeds, ratio_sets)
def test_every_patient_in_exactly_one_split(pids, seed, ratios):
    splits = assign_splits(pids, ratios=ratios, seed=seed)
    assert len(splits) == len(pids)
    assert set(splits) <= {"train", "val", "test"}
    _by_patient(pids, splits)


@FAST
@given(rows, rows, seeds, st.randoms(use_true_random=False))
def test_adding_and_reordering_rows_never_moves_a_patient(pids, more, seed, rnd):
    before = _by_patient(pids, assign_splits(pids, seed=seed))
    grown = pids + more
    rnd.shuffle(grown)
    after = _by_patient(grown, assign_splits(grown, seed=seed))
    assert {p: after[p] for p in before} == before


@FAST
@given(rows, seeds)
def test_assignment_is_a_function_of_patient_and_seed(pids, seed):
    # one patient alone lands where it lands among many
    splits = assign_splits(pids, seed=seed)
    for pid, split in zip(pids, splits, strict=True):
        assert assign_splits([pid], seed=seed)[0] == split


def test_patient_unit_matches_blake2b_by_hand():
    import hashlib

    digest = hashlib.blake2b(b"split:7:patient-42", digest_size=8).digest()
    assert patient_unit(["patient-42"], seed=7)[0] == int.from_bytes(digest, "big") / 2.0**64


@settings(max_examples=10, deadline=None)
@given(
    seeds,
    st.sampled_from([(0.6, 0.2, 0.2), (0.7, 0.1, 0.2), (0.8, 0.0, 0.2), (1 / 3, 1 / 3, 1 / 3)]),
)
def test_ratios_roughly_honoured_on_many_patients(seed, ratios):
    n = 4000
    pids = [f"p{i}" for i in range(n)]
    splits = assign_splits(pids, ratios=ratios, seed=seed)
    counts = [int((splits == s).sum()) for s in ("train", "val", "test")]
    # the counts are multinomial(n, ratios): reject only at the 1e-6 level
    expected = [n * r for r in ratios]
    for c, e in zip(counts, expected, strict=True):
        assert abs(c - e) <= 5 * math.sqrt(max(e, 1e-9) * (1 - e / n)) + 1e-9


def test_split_counts_pass_a_chi_square_test():
    n = 20_000
    splits = assign_splits([str(i) for i in range(n)], ratios=(0.6, 0.2, 0.2), seed=11)
    counts = [int((splits == s).sum()) for s in ("train", "val", "test")]
    assert stats.chisquare(counts, [0.6 * n, 0.2 * n, 0.2 * n]).pvalue > 1e-4


def test_seed_changes_the_assignment():
    pids = [f"p{i}" for i in range(200)]
    assert (assign_splits(pids, seed=0) != assign_splits(pids, seed=1)).any()


def test_empty_input():
    assert len(assign_splits([], seed=0)) == 0


# --- official splits -------------------------------------------------------------------------


def test_official_splits_are_kept_and_blanks_are_hashed():
    pids = ["a", "b", "c", "d"]
    official = ["test", None, float("nan"), "val"]
    splits = assign_splits(pids, official, seed=3)
    hashed = assign_splits(pids, seed=3)
    assert list(splits) == ["test", hashed[1], hashed[2], "val"]


def test_official_split_accepts_pandas_missing_values():
    official = pd.array(["train", pd.NA, "test"], dtype="string")
    splits = assign_splits(["a", "b", "c"], list(official), seed=0)
    assert splits[0] == "train" and splits[2] == "test" and splits[1] in {"train", "val", "test"}


@FAST
@given(rows, seeds, ratio_sets)
def test_trainval_goes_to_train_or_val_per_patient(pids, seed, ratios):
    official = ["trainval"] * len(pids)
    splits = assign_splits(pids, official, ratios=ratios, seed=seed)
    assert set(splits) <= {"train", "val"}
    by_patient = _by_patient(pids, splits)
    # same cut as the hash split, scaled to train:val, so a train patient of the hash split stays train
    hashed = _by_patient(pids, assign_splits(pids, ratios=ratios, seed=seed))
    for pid, split in hashed.items():
        if split == "train":
            assert by_patient[pid] == "train"


def test_trainval_proportion_follows_train_to_val_ratio():
    n = 6000
    splits = assign_splits([str(i) for i in range(n)], ["trainval"] * n, ratios=(0.6, 0.2, 0.2), seed=5)
    share = float((splits == "train").mean())
    assert abs(share - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)


def test_patient_in_two_official_splits_is_an_error():
    with pytest.raises(CxrbenchError, match="patient p1 .*train.*test"):
        assign_splits(["p1", "p1", "p2"], ["train", "test", "test"], seed=0)


def test_unknown_official_split_value_is_named():
    with pytest.raises(CxrbenchError, match="valid"):
        assign_splits(["a", "b"], ["train", "valid"], seed=0)


# --- ratios ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/20/20", (0.6, 0.2, 0.2)),
        ("3,1,1", (0.6, 0.2, 0.2)),
        ("80/0/20", (0.8, 0.0, 0.2)),
        ("1/1/2", (0.25, 0.25, 0.5)),
    ],
)
def test_parse_ratios(text, expected):
    assert parse_ratios(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "1/2",
        "60/20/20/0",
        "a/b/c",
        "",
        "-10/60/50",
        "0/50/50",
        "0/0/0",
        "nan/20/20",
        "inf/1/1",
        "60/nan/20",
    ],
)
def test_parse_ratios_rejects_with_the_value_named(text):
    with pytest.raises(CxrbenchError) as info:
        parse_ratios(text)
    assert "--split" in info.value.message and repr(text) in info.value.message


# --- label fractions ---------------------------------------------------------------------------


@FAST
@given(
    st.lists(patient_ids, min_size=1, max_size=80),
    seeds,
    st.lists(st.floats(0.001, 1.0), min_size=2, max_size=5),
)
def test_fractions_are_nested(pids, seed, fractions):
    subsets = [fraction_patients(pids, f, seed=seed) for f in sorted(fractions)]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert small <= large
    assert subsets[-1] <= set(pids)
    assert fraction_patients(pids, 1.0, seed=seed) == set(pids)


@FAST
@given(st.lists(patient_ids, min_size=1, max_size=80, unique=True), seeds, st.floats(0.001, 1.0))
def test_fraction_size_is_ceil_and_order_free(pids, seed, fraction):
    chosen = fraction_patients(pids, fraction, seed=seed)
    assert len(chosen) == max(1, math.ceil(fraction * len(pids) - 1e-9))
    assert fraction_patients(list(reversed(pids)) + pids, fraction, seed=seed) == chosen


def test_fraction_of_many_patients_depends_on_seed():
    pids = [f"p{i}" for i in range(1000)]
    one = fraction_patients(pids, 0.1, seed=0)
    assert len(one) == 100
    assert one != fraction_patients(pids, 0.1, seed=1)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(fraction):
    with pytest.raises(CxrbenchError, match="--fraction"):
        fraction_patients(["a"], fraction, seed=0)


def test_fraction_of_no_patients_is_empty():
    assert fraction_patients([], 0.5, seed=0) == set()
    assert len(fraction_patients(["a", "b"], np.float64(0.5), seed=0)) == 1
