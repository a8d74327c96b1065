"""Continual-learning metrics on a hand-computed 3-task example (formulas of docs/metrics.md)."""
import math

import numpy as np
import pytest

from cl_detect.eval.continual import (backward_transfer, continual_summary, forgetting, in_domain_avg,
                                      retention_ratio, zero_shot_transfer)

# a[i][j]: row i = after task i (row 0 = before training), column j-1 = task j's test set
ACC = np.array([
    [0.90, 0.05, 0.20],  # before training; the large a[0][1] must not enter forgetting
    [0.50, 0.65, 0.22],  # after task 1: task 2 already at 0.65 zero-shot
    [0.40, 0.60, 0.25],
    [0.30, 0.45, 0.70],
])
# z[i][s]: retention sets coco, lvis
RET = np.array([
    [0.40, 0.20],
    [0.38, 0.18],
    [0.35, 0.15],
    [0.30, 0.12],
])


def test_in_domain_avg():
    assert in_domain_avg(ACC) == pytest.approx((0.30 + 0.45 + 0.70) / 3, abs=1e-15)


def test_forgetting_uses_rows_1_to_T_minus_1():
    # j=1: max(a11=0.50, a21=0.40) - a31=0.30 = 0.20;  j=2: max(a12=0.65, a22=0.60) - a32=0.45 = 0.20
    assert forgetting(ACC) == pytest.approx(0.20, abs=1e-15)


def test_backward_transfer():
    # j=1: a31 - a11 = 0.30 - 0.50 = -0.20;  j=2: a32 - a22 = 0.45 - 0.60 = -0.15
    assert backward_transfer(ACC) == pytest.approx(-0.175, abs=1e-15)


def test_zero_shot_transfer_excludes_row_0():
    # j=2: a12 = 0.65;  j=3: (a13 + a23) / 2 = (0.22 + 0.25) / 2 = 0.235;  mean = 0.4425
    assert zero_shot_transfer(ACC) == pytest.approx(0.4425, abs=1e-15)


def test_retention_ratio_and_summary():
    np.testing.assert_allclose(retention_ratio(RET), [0.75, 0.60], rtol=0, atol=1e-15)
    summary = continual_summary(ACC, RET, ["coco", "lvis"])
    assert summary["ZCOCO"] == 0.30 and summary["ZLVIS"] == 0.12
    assert summary["retention_coco"] == pytest.approx(0.75, abs=1e-15)
    assert summary["final_lvis"] == 0.12
    assert summary["forgetting"] == pytest.approx(0.20, abs=1e-15)
    assert summary["bwt"] == pytest.approx(-0.175, abs=1e-15)
    assert "ZCOCO" not in continual_summary(ACC, RET[:, :1], ["aquarium"])


def test_single_task_metrics_are_nan():
    acc = np.array([[0.1], [0.6]])
    assert in_domain_avg(acc) == pytest.approx(0.6)
    assert math.isnan(forgetting(acc)) and math.isnan(backward_transfer(acc)) and math.isnan(zero_shot_transfer(acc))


def test_shape_errors_and_zero_base():
    with pytest.raises(ValueError, match=r"\(T\+1, T\)"):
        forgetting(np.ones((3, 3)))  # forgot the before-training row
    with pytest.raises(ValueError, match="retention"):
        continual_summary(ACC, RET, ["coco"])
    assert math.isnan(retention_ratio([[0.0], [0.2]])[0])


def test_a_nan_the_formulas_need_is_refused_naming_the_cell():
    # these gave a NaN in-domain Avg / BWT (a dash), or a forgetting averaged over fewer tasks
    final = ACC.copy()
    final[3, 1] = np.nan
    for metric in (in_domain_avg, forgetting, backward_transfer):
        with pytest.raises(ValueError, match=r"a\[3\]\[2\] \(AP on task 2 after training task 3\) is NaN"):
            metric(final)
    diagonal = ACC.copy()
    diagonal[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"a\[2\]\[2\] .* is NaN"):
        continual_summary(diagonal)
    before_learned = ACC.copy()
    before_learned[1, 2] = np.nan  # task 3 scored after task 1: "not applicable" is allowed there
    assert backward_transfer(before_learned) == pytest.approx(-0.175, abs=1e-15)
    assert in_domain_avg(before_learned) == pytest.approx(in_domain_avg(ACC), abs=1e-15)
