"""Oracle tests for hyperlatent.leakage (spec ../shared/specs/leakage.md §3, §4, §12).

Oracles used: closed forms (separated clusters, k = m - 1, random-label chance levels), scikit-learn's
NearestNeighbors / KNeighborsClassifier + LeaveOneOut / IsolationForest / roc_auc_score, a numpy brute-force
neighbour search with an explicit (distance, index) tie rule, invariances, and the spec's verified values.
"""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from hyperlatent.leakage import (REGIME_THRESHOLDS, audit_class_split, class_leakage, class_split_aurocs,
                                 classify_regime, direction_instability, leakage_curve, neighborhood_leakage)


def brute_ell(X, y, k):
    "Per-sample leakage by a direct O(m^2) distance matrix, self excluded, ties broken by the lower index."
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind='stable')[:, :k]  # stable: equal distances keep index order
    return (y[idx] != y[:, None]).mean(1)


def sk_ell(X, y, k):
    "Per-sample leakage with scikit-learn; kneighbors() without X excludes each point from its own list."
    idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    return (y[idx] != y[:, None]).mean(1)


# ---------------------------------------------------------------- neighborhood_leakage: closed forms

def test_separated_clusters_give_zero():  # spec §12 oracle 1
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 300)
    X = rng.normal(size=(3000, 16)) + 100 * rng.normal(size=(10, 16))[y]
    assert neighborhood_leakage(X, y, k=10) == 0.0
    assert np.all(neighborhood_leakage(X, y, k=10, per_sample=True) == 0)


def test_identical_classes_give_chance_level():  # spec §12 oracle 2 (verified value 0.9031)
    rng = np.random.default_rng(0)
    m, K = 3000, 10
    y = np.repeat(np.arange(K), m // K)
    L = neighborhood_leakage(rng.normal(size=(m, 16)), y, k=10)
    assert abs(L - (1 - 1 / K) * m / (m - 1)) < 0.01
    # and clearly not the self-inclusion bug's value (about 0.81, oracle 4)
    assert L > 0.88


def test_imbalanced_chance_levels():  # spec §12 oracle 3 (verified 0.3209 / 0.1998 / 0.8052)
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(2000, int), np.ones(500, int)]
    cl = class_leakage(rng.normal(size=(2500, 8)), y, k=15)
    assert abs(cl.leakage - 0.32) < 0.015
    assert abs(cl.per_class[0] - 500 / 2499) < 0.015
    assert abs(cl.per_class[1] - 2000 / 2499) < 0.03
    assert cl.chance == pytest.approx(1 - (0.8 ** 2 + 0.2 ** 2), abs=1e-15)
    assert cl.chance_exact == pytest.approx(0.8 * 500 / 2499 + 0.2 * 2000 / 2499, abs=1e-15)
    assert cl.counts == {0: 2000, 1: 500} and cl.k == 15 and cl.m == 2500


def test_k_equals_m_minus_one_is_exact_for_any_geometry():  # spec §12 oracle 5
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=57)
    X = rng.normal(size=(57, 5)) * np.array([1, 10, 0.1, 3, 1])
    ell = neighborhood_leakage(X, y, k=56, per_sample=True)
    counts = np.bincount(y)
    np.testing.assert_array_equal(ell, (57 - counts[y]) / 56)
    cl = class_leakage(X, y, k=56)
    for c in range(4):
        assert cl.per_class[c] == pytest.approx(cl.per_class_chance[c], abs=1e-15)
    assert cl.leakage == pytest.approx(cl.chance_exact, abs=1e-14)


def test_k1_is_leave_one_out_1nn_error():  # spec §12 oracle 6
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 4)) + 1.2 * np.eye(3, 4)[y]
    acc = cross_val_score(KNeighborsClassifier(1), X, y, cv=LeaveOneOut())
    assert neighborhood_leakage(X, y, k=1) == pytest.approx(1 - acc.mean(), abs=1e-12)


# ---------------------------------------------------------------- agreement with independent searches

@pytest.mark.parametrize('k', [1, 3, 10, 25])
@pytest.mark.parametrize('d', [2, 30, 300])
def test_matches_sklearn_on_random_data(k, d):
    rng = np.random.default_rng(k * 1000 + d)
    m = 400
    y = rng.integers(0, 5, size=m)
    X = rng.normal(size=(m, d)) + 0.7 * rng.normal(size=(5, d))[y]
    np.testing.assert_array_equal(neighborhood_leakage(X, y, k=k, per_sample=True), sk_ell(X, y, k))
    # float32 and torch inputs give the same answer
    np.testing.assert_array_equal(
        neighborhood_leakage(torch.from_numpy(X), torch.from_numpy(y), k=k, per_sample=True).numpy(), sk_ell(X, y, k))


def test_ties_are_broken_by_lower_index():
    # integer grid with many exact duplicates and equal distances: the brute-force oracle's stable sort
    # fixes the (distance, index) order, so the answer is unique and must match exactly
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, size=(300, 3)).astype(np.float64)
    y = rng.integers(0, 3, size=300)
    for k in (1, 4, 17):
        np.testing.assert_array_equal(neighborhood_leakage(X, y, k=k, per_sample=True), brute_ell(X, y, k))


def test_duplicates_count_and_self_never_counts():
    X = np.zeros((4, 2))  # all four rows coincide
    y = np.array([0, 0, 1, 1])
    # k = 1: the lowest-index other row; row 0 -> 1 (same), row 1 -> 0 (same), row 2 -> 0 (diff), row 3 -> 0 (diff)
    np.testing.assert_array_equal(neighborhood_leakage(X, y, k=1, per_sample=True), [0, 0, 1, 1])
    np.testing.assert_array_equal(neighborhood_leakage(X, y, k=3, per_sample=True), [2 / 3] * 4)


def test_chunk_size_does_not_change_result():
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(257, 12)), rng.integers(0, 4, size=257)
    ref = neighborhood_leakage(X, y, k=7, per_sample=True)
    for cs in (1, 16, 100, 257):
        np.testing.assert_array_equal(neighborhood_leakage(X, y, k=7, per_sample=True, chunk_size=cs), ref)


def test_leakage_curve_matches_single_calls():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(300, 6)), rng.integers(0, 3, size=300)
    curve = leakage_curve(X, y, ks=(20, 1, 5))
    assert list(curve) == [20, 1, 5]
    for k, v in curve.items():
        assert v == sk_ell(X, y, k).mean()


# ---------------------------------------------------------------- invariances (spec §12 oracle 7)

def test_invariances():
    rng = np.random.default_rng(7)
    m, d = 500, 10
    y = rng.integers(0, 6, size=m)
    X = rng.normal(size=(m, d)) + rng.normal(size=(6, d))[y]
    ell = neighborhood_leakage(X, y, k=8, per_sample=True)
    perm = rng.permutation(m)
    np.testing.assert_array_equal(neighborhood_leakage(X[perm], y[perm], k=8, per_sample=True), ell[perm])
    relabel = np.array(['f', 'a', 'z', 'q', 'b', 'm'])[y]  # new names, different sort order
    np.testing.assert_array_equal(neighborhood_leakage(X, relabel, k=8, per_sample=True), ell)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    np.testing.assert_array_equal(neighborhood_leakage(3.5 * X @ Q + 7.0, y, k=8, per_sample=True), ell)


def test_image_shaped_input_is_flattened():
    rng = np.random.default_rng(8)
    X = rng.random((200, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=200)
    assert neighborhood_leakage(X, y, k=5) == pytest.approx(sk_ell(X.reshape(200, -1).astype(np.float64), y, 5).mean(), abs=0)


def test_output_types_follow_input():
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(50, 3)), rng.integers(0, 2, size=50)
    assert isinstance(neighborhood_leakage(X, y, k=3), float)
    assert isinstance(neighborhood_leakage(X, y, k=3, per_sample=True), np.ndarray)
    t = neighborhood_leakage(torch.tensor(X, dtype=torch.float32), y, k=3, per_sample=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (50,)


# ---------------------------------------------------------------- bad input

def test_bad_input_errors():
    X = np.random.default_rng(0).normal(size=(10, 3))
    y = np.array([0, 1] * 5)
    with pytest.raises(ValueError, match='k <= m - 1 = 9'):
        neighborhood_leakage(X, y, k=10)
    with pytest.raises(ValueError, match='k <= m - 1'):
        neighborhood_leakage(X, y, k=0)
    with pytest.raises(TypeError, match='k must be an int'):
        neighborhood_leakage(X, y, k=2.0)
    with pytest.raises(ValueError, match='at least 2 classes'):
        neighborhood_leakage(X, np.zeros(10), k=3)
    with pytest.raises(ValueError, match='expected 10, got 9'):
        neighborhood_leakage(X, y[:9], k=3)
    Xn = X.copy(); Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match='finite'):
        neighborhood_leakage(Xn, y, k=3)
    with pytest.raises(ValueError, match='finite'):
        neighborhood_leakage(torch.tensor(Xn), y, k=3)
    yn = y.astype(float); yn[0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        neighborhood_leakage(X, yn, k=3)
    with pytest.raises(ValueError, match=r'shape \(m, d\)'):
        neighborhood_leakage(X[:, 0], y, k=3)
    with pytest.raises(TypeError, match='numpy array or a torch.Tensor'):
        neighborhood_leakage(X.tolist(), y, k=3)
    with pytest.raises(ValueError, match='1-D'):
        neighborhood_leakage(X, y[:, None], k=3)


# ---------------------------------------------------------------- class-split protocol and detectors

def _two_class(shift, n_tr=400, n_te=200, dim=16, seed=0):
    g = np.random.default_rng(seed)
    ytr, yte = np.repeat([0, 1], n_tr), np.repeat([0, 1], n_te)
    return (g.normal(size=(2 * n_tr, dim)) + shift * ytr[:, None], ytr,
            g.normal(size=(2 * n_te, dim)) + shift * yte[:, None], yte)


@pytest.mark.parametrize('det', ['knn', 'iforest', 'lof'])
def test_detectors_separated_and_indistinguishable(det):  # spec §12 oracle 9
    assert class_split_aurocs(*_two_class(4.0), detector=det, classes=[1]) == {1: 1.0}
    a = class_split_aurocs(*_two_class(0.0, seed=1), detector=det)
    assert set(a) == {0, 1}
    for v in a.values():
        assert abs(v - 0.5) < 0.08, (det, a)


def test_knn_inversion_regime():  # spec §12 oracle 8: concentrated anomalies invert, wide ones are detected
    g = np.random.default_rng(0)
    tr = g.normal(size=(3000, 32))
    te = g.normal(size=(1000, 32))
    for s, lo, hi in [(0.1, 0.0, 0.05), (1.0, 0.4, 0.6), (2.0, 0.95, 1.0)]:
        an = s * g.normal(size=(1000, 32))
        a = class_split_aurocs(np.vstack([tr, an[:10]]), np.r_[np.zeros(3000), np.ones(10)],
                               np.vstack([te, an]), np.r_[np.zeros(1000), np.ones(1000)], detector='knn', classes=[1.0])
        assert lo <= a[1.0] <= hi, (s, a)


def test_protocol_against_direct_sklearn():
    # the protocol written out by hand with scikit-learn: IsolationForest fitted on the other classes' train rows
    g = np.random.default_rng(11)
    ytr, yte = g.integers(0, 4, size=600), g.integers(0, 4, size=300)
    centers = 2.0 * g.normal(size=(4, 5))
    Xtr, Xte = g.normal(size=(600, 5)) + centers[ytr], g.normal(size=(300, 5)) * 1.3 + centers[yte]
    ours = class_split_aurocs(Xtr, ytr, Xte, yte, detector='iforest', seed=3)
    for c in range(4):
        f = IsolationForest(n_estimators=100, random_state=3).fit(Xtr[ytr != c])
        assert ours[c] == pytest.approx(roc_auc_score(yte == c, -f.score_samples(Xte)), abs=1e-12)
    # a callable detector: 3-NN mean distance with scikit-learn equals the built-in 'knn'
    def sk_knn(train, test):
        return NearestNeighbors(n_neighbors=3).fit(train).kneighbors(test)[0].mean(1)
    ref = class_split_aurocs(Xtr, ytr, Xte, yte, detector='knn')
    got = class_split_aurocs(Xtr, ytr, Xte, yte, detector=sk_knn)
    assert got.keys() == ref.keys()
    for c in ref:
        assert got[c] == pytest.approx(ref[c], abs=1e-12)


def test_held_out_class_never_in_fit_set():
    g = np.random.default_rng(12)
    ytr, yte = np.repeat([3, 5, 9], 50), np.repeat([3, 5, 9], 20)
    Xtr = np.c_[ytr, g.normal(size=150)].astype(float)  # column 0 carries the label, to spy on the fit set
    Xte = np.c_[yte, g.normal(size=60)].astype(float)
    seen = []

    def spy(train, test):
        seen.append((set(np.unique(train[:, 0]).tolist()), len(train), len(test)))
        return test[:, 1]

    class_split_aurocs(Xtr, ytr, Xte, yte, detector=spy, classes=[5, 9])
    assert seen == [({3.0, 9.0}, 100, 60), ({3.0, 5.0}, 100, 60)]


def test_class_split_errors():
    data = _two_class(1.0)
    with pytest.raises(ValueError, match='detector must be one of'):
        class_split_aurocs(*data, detector='ocsvm')
    with pytest.raises(TypeError, match='detector must be a string or a callable'):
        class_split_aurocs(*data, detector=3)
    with pytest.raises(ValueError, match='no test samples'):
        class_split_aurocs(*data, classes=[2])
    with pytest.raises(ValueError, match='same number of features'):
        class_split_aurocs(data[0], data[1], data[2][:, :3], data[3])
    with pytest.raises(ValueError, match='at least 2 classes'):
        class_split_aurocs(data[0], data[1], data[2][:200], data[3][:200])
    with pytest.raises(ValueError, match='one score per test row'):
        class_split_aurocs(*data, detector=lambda tr, te: np.zeros(3))


# ---------------------------------------------------------------- direction_instability (spec §4, §12 oracles 11-14)

def test_direction_instability_hand_vectors():
    d = direction_instability([0.6, 0.65, 0.9, 0.99, 1.0])
    assert (d['rho_dir'], d['inversion_rate'], d['near_chance_rate']) == (0.0, 0.0, 0.0)
    d = direction_instability([0.8] * 5 + [0.2] * 5)
    assert d['rho_dir'] == 0.5 and d['inversion_rate'] == 0.5 and d['auroc_var'] == pytest.approx(0.09, abs=1e-15)
    d = direction_instability([0.5] * 10)
    assert (d['rho_dir'], d['near_chance_rate'], d['inversion_rate']) == (1.0, 1.0, 0.0)
    d = direction_instability([0.7] * 3 + [0.3] * 3 + [0.5] * 4)
    assert d['rho_dir'] == pytest.approx(0.7, abs=1e-15) and (d['n_up'], d['n_down'], d['n_chance']) == (3, 3, 4)
    # inversion and near-chance overlap for 0.47 (spec §4); variance is the population one (ddof = 0)
    a = [0.47, 0.9, 0.1, 0.52]
    d = direction_instability(a)
    assert d['votes'] == [0, 1, -1, 0]
    assert d['inversion_rate'] == 0.5 and d['near_chance_rate'] == 0.5 and d['rho_dir'] == 0.75
    assert d['auroc_var'] == pytest.approx(np.var(a, ddof=0), abs=1e-15)


def test_direction_instability_band_edge_and_containers():
    assert direction_instability([0.55, 0.45])['votes'] == [0, 0]  # |AUC - 1/2| = eps counts as near chance
    assert direction_instability([0.5501, 0.4499])['votes'] == [1, -1]
    assert direction_instability([0.6], eps=0.0)['votes'] == [1]
    assert direction_instability({'a': 0.2, 'b': 0.9})['votes'] == {'a': -1, 'b': 1}
    assert direction_instability(pd.Series({3: 0.2, 4: 0.5}))['votes'] == {3: -1, 4: 0}
    for bad in ([], [0.3, np.nan], [1.5], [[0.2, 0.3]]):
        with pytest.raises(ValueError):
            direction_instability(bad)
    for eps in (-0.1, 0.5):
        with pytest.raises(ValueError, match='eps'):
            direction_instability([0.3], eps=eps)
    with pytest.raises(TypeError, match='eps'):  # bools are rejected as a type (hyperlatent._checks.check_float)
        direction_instability([0.3], eps=True)


def test_table1_regimes():
    # spec §7 Table 1 rows (rates averaged over 3 detectors, chance 0.9 for 10 balanced classes)
    rows = {('FMNIST', 'pixel'): (0.2428, 0.03, 0.10), ('FMNIST', 'latent'): (0.2346, 0.23, 0.30),
            ('CIFAR', 'pixel'): (0.7609, 0.43, 0.50), ('CIFAR', 'latent'): (0.7885, 0.50, 0.50),
            ('Imagenette', 'pixel'): (0.7815, 0.43, 0.63), ('Imagenette', 'latent'): (0.8363, 0.50, 0.63)}
    got = {key: classify_regime(rd, ri, L / 0.9)[0] for key, (L, ri, rd) in rows.items()}
    assert got[('FMNIST', 'pixel')] == 'well-posed'
    assert got[('FMNIST', 'latent')] == 'caution'
    assert all(got[key] == 'ill-posed' for key in rows if key[0] != 'FMNIST')
    assert set(REGIME_THRESHOLDS) == {'ill_posed', 'caution'}


# ---------------------------------------------------------------- audit (spec §12 oracle 16)

def mixed_benchmark(seed=0, n_tr=500, n_te=200, dim=32):
    g = np.random.default_rng(seed)

    def draw(n):
        y = np.repeat(np.arange(10), n)
        X = g.normal(size=(10 * n, dim))
        core = y >= 7
        X[core] *= 0.3
        X[~core, y[~core]] += 3.0
        return X, y
    return (*draw(n_tr), *draw(n_te))


def test_audit_mixed_benchmark_knn():
    data = mixed_benchmark()
    with pytest.warns(UserWarning, match='ill-posed'):
        res = audit_class_split(*data, detectors=['knn'], k=10)
    pc = res.per_class
    # spec [V]: core AUC about 0.11, peripheral 0.70-0.76, L_k = 0.724, rho_dir = rho_inv = 0.30
    assert (abs(pc.loc[[7, 8, 9], 'auc_knn'] - 0.11) < 0.05).all()
    assert ((pc.loc[:6, 'auc_knn'] > 0.65) & (pc.loc[:6, 'auc_knn'] < 0.8)).all()
    assert res.row['leakage'] == pytest.approx(0.724, abs=0.015)
    assert res.row['rho_dir'] == pytest.approx(0.3, abs=1e-12)
    assert res.row['inversion_rate'] == pytest.approx(0.3, abs=1e-12)
    assert res.row['chance'] == pytest.approx(0.9, abs=1e-12)
    assert list(pc['vote_knn']) == [1] * 7 + [-1] * 3
    # the row is consistent with the building blocks called directly
    assert res.row['leakage'] == neighborhood_leakage(data[2], data[3], k=10)
    assert dict(zip(pc.index, pc['auc_knn'])) == class_split_aurocs(*data, detector='knn')
    assert res.ill_posed and res.regime == 'ill-posed' and res.row['ill_posed'] is True
    # no NaN anywhere in the row; undefined entries are None
    assert all(v is None or not (isinstance(v, float) and math.isnan(v)) for v in res.row.values())


def test_audit_identity_representation_matches_fixed():
    data = mixed_benchmark(seed=1, n_tr=60, n_te=30, dim=8)
    fixed = audit_class_split(*data, detectors=['knn', 'lof'], k=5, warn=False, detector_kw={'lof': {'n_neighbors': 10}})
    calls = []

    def identity(X_normal):
        calls.append(len(X_normal))
        return lambda X: X

    per_split = audit_class_split(*data, detectors=['knn', 'lof'], k=5, warn=False, represent=identity,
                                  detector_kw={'lof': {'n_neighbors': 10}})
    assert calls == [540] * 10  # one representation per split, fitted on the 9 normal classes' training rows
    pd.testing.assert_frame_equal(fixed.per_class, per_split.per_class)
    assert fixed.row.keys() == per_split.row.keys()
    for key, v in fixed.row.items():  # the per-split leakage is a mean of 10 equal values: equal up to rounding
        if isinstance(v, float):
            assert per_split.row[key] == pytest.approx(v, rel=1e-14, abs=1e-15), key
        else:
            assert per_split.row[key] == v, key


def test_audit_no_warning_when_disabled_and_errors():
    data = mixed_benchmark(n_tr=40, n_te=20, dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        audit_class_split(*data, detectors=['knn'], warn=False)
    with pytest.raises(ValueError, match='at least one detector'):
        audit_class_split(*data, detectors=[])
    with pytest.raises(ValueError, match='distinct names'):
        audit_class_split(*data, detectors=['knn', 'knn'])
    with pytest.raises(ValueError, match='k <= m - 1'):
        audit_class_split(*data, detectors=['knn'], k=200)
    with pytest.raises(TypeError, match='represent'):
        audit_class_split(*data, detectors=['knn'], represent='pca')


def test_audit_represent_sees_original_shape():
    g = np.random.default_rng(13)
    ytr, yte = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    Xtr = g.random((90, 1, 4, 4)) + ytr[:, None, None, None]
    Xte = g.random((30, 1, 4, 4)) + yte[:, None, None, None]
    shapes = []

    def rep(X_normal):
        shapes.append(X_normal.shape)
        return lambda X: torch.from_numpy(X.reshape(len(X), -1).mean(1, keepdims=True))  # a 1-D torch feature

    res = audit_class_split(Xtr, ytr, torch.from_numpy(Xte), yte, detectors='knn', k=3, represent=rep, warn=False)
    assert shapes == [(60, 1, 4, 4)] * 3
    # classes at mean levels 0.5, 1.5, 2.5: the middle class sits between the others -> its kNN AUROC is perfect
    # too, because the classes do not overlap; all held-out classes are detected
    assert list(res.per_class['auc_knn']) == [1.0, 1.0, 1.0] and res.row['leakage'] == 0.0


@pytest.mark.slow
def test_audit_three_detectors_rates_on_the_1_30_grid():  # spec §12 oracle 15
    res = audit_class_split(*mixed_benchmark(), k=10, warn=False)
    for r in ('rho_dir', 'inversion_rate', 'near_chance_rate'):
        assert res.row[r] * 30 == pytest.approx(round(res.row[r] * 30), abs=1e-9)
        assert res.row[r] == pytest.approx(np.mean([res.row[f'{d}/{r}'] for d in ('knn', 'iforest', 'lof')]), abs=1e-15)


def test_leakage_imports_only_knn_metrics_checks():
    "hyperlatent.leakage needs neither the model code nor hyperlatent.detect; detect re-exports its baselines."
    import subprocess
    import sys
    code = ('import sys, hyperlatent.leakage; bad = [m for m in ("hyperlatent.detect", "hyperlatent.vae", '
            '"hyperlatent.train") if m in sys.modules]; assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)
    import hyperlatent.detect as det
    import hyperlatent.leakage as lk
    assert det.baseline_scores is lk.baseline_scores and det.BASELINES is lk.BASELINES
