"""Tests of hyperlatent.metrics against independent oracles (scikit-learn, scipy's Mann-Whitney U, hand-worked
ROC and PR curves, the authors' archived scores)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve

import hyperlatent.metrics as met
from hyperlatent.metrics import aupr, auroc, detection_metrics, fpr_at_tpr

REF = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'cifar10_vs_cifar100_scores.npz'


# ---------------------------------------------------------------- metrics
@pytest.mark.parametrize('seed', range(5))
def test_auroc_matches_sklearn_and_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates ties
    a = auroc(y, s)
    assert a == roc_auc_score(y, s)
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic  # U counts ties as 1/2: AUROC = U / (n1 n0)
    assert abs(a - u / ((y == 1).sum() * (y == 0).sum())) < 1e-12


def test_fpr_at_tpr_hand_computed():
    # ID 0.1 0.4 0.35 0.8; OOD 0.9 0.6 0.7 0.2 0.5 -> order O I O O O I I O I.
    # ROC vertices (0,0) (0,.2) (.25,.2) (.25,.8) (.75,.8) (.75,1) (1,1).
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1]); s = np.array([.1, .4, .35, .8, .9, .6, .7, .2, .5])
    assert fpr_at_tpr(y, s) == pytest.approx(0.75, abs=1e-15)
    assert fpr_at_tpr(y, s, tpr=0.5) == pytest.approx(0.25, abs=1e-15)
    assert fpr_at_tpr(y, s, tpr=0.2) == pytest.approx(0.0, abs=1e-15)  # first reach of TPR 0.2 is at FPR 0
    assert auroc(y, s) == pytest.approx(14 / 20, abs=1e-15)
    # a sloped segment (a tie across classes): ID (0, 1), OOD (1, 2) -> (0,0) (0,.5) (.5,1) (1,1)
    assert fpr_at_tpr([0, 0, 1, 1], [0., 1., 1., 2.]) == pytest.approx(0.45, abs=1e-15)
    assert fpr_at_tpr([0, 0, 1, 1], [0., 1., 1., 2.], tpr=0.75) == pytest.approx(0.25, abs=1e-15)


@pytest.mark.parametrize('seed', range(4))
def test_fpr_at_tpr_threshold_oracle(seed):
    "No ties and TPR exactly attainable: FPR = fraction of ID scores >= the 19th-largest of 20 OOD scores."
    rng = np.random.default_rng(seed)
    sid, sood = rng.normal(size=137), rng.normal(size=20) + 1
    y = np.r_[np.zeros(137), np.ones(20)]; s = np.r_[sid, sood]
    thr = np.sort(sood)[::-1][18]
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx((sid >= thr).mean(), abs=1e-15)
    # and between attainable TPRs it interpolates linearly on the ROC
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(y, s, 0.93) == pytest.approx(np.interp(0.93, t, f), abs=1e-12)


def test_aupr_both_conventions_against_sklearn():
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200); s = rng.normal(size=200) + y
    assert aupr(y, s) == average_precision_score(y, s)
    assert aupr(y, s, positive='id') == average_precision_score(1 - y, -s)


def test_detection_metrics_and_bootstrap():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(100), np.ones(60)]; s = rng.normal(size=160) + y
    m = detection_metrics(y, s)
    assert set(m) == {'auroc', 'fpr95', 'fpr95_id', 'aupr_ood', 'aupr_id', 'n_id', 'n_ood'}
    assert (m['n_id'], m['n_ood']) == (100, 60)
    assert m['fpr95_id'] == fpr_at_tpr(1 - y, -s)
    b1 = detection_metrics(y, s, n_bootstrap=100, seed=7)
    b2 = detection_metrics(y, s, n_bootstrap=100, seed=7)
    assert b1 == b2  # seeded
    for key in ('auroc', 'fpr95', 'aupr_ood'):
        lo, hi = b1[f'{key}_ci']
        assert lo <= m[key] <= hi and lo < hi


@pytest.mark.parametrize('labels,scores,msg', [
    ([], [], 'non-empty'),
    ([0, 0, 0], [1., 2., 3.], 'both classes'),
    ([0, 1, 1], [1., np.nan, 3.], 'finite'),
    ([0, 1], [1., 2., 3.], 'same length'),
    ([0, 2, 1], [1., 2., 3.], '0 .in-distribution. or 1'),
    ([[0, 1]], [[1., 2.]], '1-D'),
])
def test_metric_errors(labels, scores, msg):
    for f in (auroc, fpr_at_tpr, aupr, detection_metrics):
        with pytest.raises(ValueError, match=msg):
            f(labels, scores)
    with pytest.raises(ValueError, match='tpr'):
        fpr_at_tpr([0, 1], [0., 1.], tpr=0)


def test_archived_result_reproduced_exactly():
    if not REF.exists():
        pytest.skip(f'archived scores not found at {REF} (only present next to the research checkout)')
    arc = np.load(REF)
    y, s = arc['labels'], arc['scores']
    m = detection_metrics(y, s)
    assert abs(m['auroc'] - 0.8954305) <= 1e-12  # the authors' own check
    assert round(m['fpr95'], 4) == 0.2323
    f, t, _ = roc_curve(y, s)
    assert m['fpr95'] == np.interp(0.95, t, f)  # the authors' formula, same float
    assert round(m['aupr_ood'], 6) == 0.829132 and round(m['aupr_id'], 6) == 0.928440
    # ID-positive convention: the first ROC point reaching TPR 0.95 (0.7618; np.interp picks 0.7621 on the flat part)
    f, t, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert m['fpr95_id'] == f[np.argmax(t >= 0.95)]
    assert round(m['fpr95_id'], 4) == 0.7618


# ---------------------------------------------------------------- named conventions (OpenOOD vs interpolated)
def test_fpr_conventions_hand_computed():
    "OpenOOD reads the first ROC vertex with TPR >= 0.95; the default interpolates linearly (hand-worked ROCs)."
    # sloped segment (0,.5) -> (.5,1): interpolated 0.45, first vertex with TPR >= .95 is (.5, 1)
    assert fpr_at_tpr([0, 0, 1, 1], [0., 1., 1., 2.]) == pytest.approx(0.45, abs=1e-15)
    assert fpr_at_tpr([0, 0, 1, 1], [0., 1., 1., 2.], convention='openood') == pytest.approx(0.5, abs=1e-15)
    # all scores tied: single segment (0,0) -> (1,1)
    assert fpr_at_tpr([0, 0, 1, 1], [1.] * 4, convention='interpolated') == pytest.approx(0.95, abs=1e-15)
    assert fpr_at_tpr([0, 0, 1, 1], [1.] * 4, convention='openood') == pytest.approx(1.0, abs=1e-15)
    # vertical segment at FPR .75: both agree
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1]); s = np.array([.1, .4, .35, .8, .9, .6, .7, .2, .5])
    assert fpr_at_tpr(y, s, convention='openood') == pytest.approx(0.75, abs=1e-15)
    assert fpr_at_tpr(y, s, tpr=0.5, convention='openood') == pytest.approx(0.25, abs=1e-15)


@pytest.mark.parametrize('seed', range(4))
def test_openood_fpr_matches_threshold_oracle(seed):
    "No ties: OpenOOD FPR@TPR = fraction of ID scores >= the ceil(t * n_ood)-th largest OOD score."
    rng = np.random.default_rng(seed)
    sid, sood = rng.normal(size=137), rng.normal(size=23) + 1
    y = np.r_[np.zeros(137), np.ones(23)]; s = np.r_[sid, sood]
    for t in (0.5, 0.9, 0.95):
        thr = np.sort(sood)[::-1][int(np.ceil(t * 23)) - 1]
        assert fpr_at_tpr(y, s, t, convention='openood') == pytest.approx((sid >= thr).mean(), abs=1e-15)
        assert fpr_at_tpr(y, s, t, convention='openood') >= fpr_at_tpr(y, s, t) - 1e-15


def test_aupr_conventions_hand_computed():
    "OOD (0.9, 0.2), ID (0.7): PR points (1/2, 1), (1/2, 1/2), (1, 2/3) + (0, 1): AP = 5/6, trapezoid = 19/24."
    y, s = [1, 0, 1], [.9, .7, .2]
    assert aupr(y, s) == pytest.approx(5 / 6, abs=1e-15)
    assert aupr(y, s, convention='average_precision') == pytest.approx(5 / 6, abs=1e-15)
    assert aupr(y, s, convention='trapezoid') == pytest.approx(19 / 24, abs=1e-15)
    # ID positive is OOD positive on flipped labels and negated scores (identity)
    rng = np.random.default_rng(3)
    yy = rng.integers(0, 2, 100); ss = rng.normal(size=100) + yy
    assert aupr(yy, ss, 'id', 'trapezoid') == aupr(1 - yy, -ss, 'ood', 'trapezoid')


def test_convention_errors_and_detection_metrics_passthrough():
    y = np.array([0, 0, 1, 1]); s = np.array([0., 1., 1., 2.])
    with pytest.raises(ValueError, match='convention'):
        fpr_at_tpr(y, s, convention='odin')
    with pytest.raises(ValueError, match='convention'):
        aupr(y, s, convention='interp')
    with pytest.raises(ValueError, match='fpr_convention'):
        detection_metrics(y, s, fpr_convention='x')
    m = detection_metrics(y, s, fpr_convention='openood', aupr_convention='trapezoid')
    assert m['fpr95'] == fpr_at_tpr(y, s, convention='openood') == 0.5
    assert m['fpr95_id'] == fpr_at_tpr(1 - y, -s, convention='openood')
    assert m['aupr_ood'] == aupr(y, s, convention='trapezoid') and m['aupr_id'] == aupr(y, s, 'id', 'trapezoid')
    assert detection_metrics(y, s)['fpr95'] == pytest.approx(0.45, abs=1e-15)  # default unchanged


@pytest.mark.skipif(not REF.exists(), reason=f'{REF} not found (../shared/reference is not part of a clone): '
                    'archived FPR95 check skipped')
def test_archived_fpr95_under_both_conventions():
    "The README's FPR95 0.2323 is the interpolated one (OOD positive); OpenOOD's first-vertex reading agrees here."
    arc = np.load(REF)
    assert round(fpr_at_tpr(arc['labels'], arc['scores'], convention='interpolated'), 4) == 0.2323
    assert round(fpr_at_tpr(arc['labels'], arc['scores'], convention='openood'), 4) == 0.2323


def test_metrics_is_torch_free_and_old_import_path_works():
    import subprocess
    import sys
    code = 'import sys, hyperlatent.metrics; assert "torch" not in sys.modules, "torch imported"'
    subprocess.run([sys.executable, '-c', code], check=True)
    import hyperlatent.detect as det
    for name in ('auroc', 'roc_data', 'fpr_at_tpr', 'aupr', 'detection_metrics'):
        assert getattr(det, name) is getattr(met, name) and name in det.__all__
    assert torch.is_tensor(torch.zeros(1))  # torch tensors are still accepted as inputs:
    assert auroc(torch.tensor([0, 1]), torch.tensor([0., 1.])) == 1.0
