"""Tests of hyperlatent.detect against independent oracles (scikit-learn, scipy, brute force, hand-worked ROC,
the authors' archived scores)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

import hyperlatent.detect as det
from hyperlatent.detect import (aupr, auroc, baseline_scores, detection_metrics, fpr_at_tpr, knn_score,
                                knn_search)

REF = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'cifar10_vs_cifar100_scores.npz'


def _brute(bank, query, k, exclude_self=False):
    "Oracle: direct float64 distances, lexicographic (distance, index) order."
    bank, query = np.asarray(bank, np.float64), np.asarray(query, np.float64)
    D = np.sqrt(((query[:, None, :] - bank[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        D[np.arange(len(query)), np.arange(len(query))] = np.inf
    idx = np.array([np.lexsort((np.arange(bank.shape[0]), row))[:k] for row in D])
    return np.take_along_axis(D, idx, 1), idx


# ---------------------------------------------------------------- kNN search
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('k,chunk', [(1, None), (3, 5), (10, 64)])
def test_knn_matches_sklearn_brute(dtype, k, chunk):
    rng = np.random.default_rng(k)
    X, Y = rng.normal(size=(800, 16)).astype(dtype), rng.normal(size=(150, 16)).astype(dtype)
    ref_d, ref_i = NearestNeighbors(n_neighbors=k, algorithm='brute').fit(X).kneighbors(Y)
    d, i = knn_search(X, Y, k, chunk_size=chunk)
    assert d.dtype == dtype and i.dtype == np.int64 and d.shape == (150, k)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(knn_score(X, Y, k, chunk_size=chunk), ref_d.mean(1), rtol=1e-5)


def test_exclude_self_matches_sklearn_kneighbors_without_query():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6))
    ref_d, ref_i = NearestNeighbors(n_neighbors=3, algorithm='brute').fit(X).kneighbors()  # excludes self
    d, i = knn_search(X, X, 3, exclude_self=True, chunk_size=17)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-10)


def test_bank_chunking_and_merge(monkeypatch):
    "A tiny block budget forces many bank blocks per query block; results must not change."
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(1000, 5)), rng.normal(size=(40, 5))
    full = knn_search(X, Y, 4)
    monkeypatch.setattr(det, '_BLOCK_BYTES', 8 * 16 * 50)  # 16 query rows x 50 bank rows
    small = knn_search(X, Y, 4)
    np.testing.assert_array_equal(full[1], small[1])
    np.testing.assert_array_equal(full[0], small[0])
    np.testing.assert_array_equal(full[1], _brute(X, Y, 4)[1])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans())
def test_knn_ties_and_duplicates_match_lexicographic_oracle(n, m, d, seed, self_):
    "Small-integer data: many exact ties and duplicates; order must be (distance, lower index)."
    rng = np.random.default_rng(seed)
    bank = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    query = bank if self_ else rng.integers(-2, 3, size=(m, d)).astype(np.float64)
    kmax = n - 1 if self_ else n
    if kmax < 1:
        return
    k = int(rng.integers(1, kmax + 1))
    dist, idx = knn_search(bank, query, k, exclude_self=self_, chunk_size=int(rng.integers(1, 8)))
    rd, ri = _brute(bank, query, k, exclude_self=self_)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_allclose(dist, rd, rtol=0, atol=1e-12)


def test_close_pairs_are_exact():
    "Gram-expansion cancellation: far-from-origin points 1e-4 apart; distances must still be exact."
    rng = np.random.default_rng(5)
    base = rng.normal(size=(1, 32)).astype(np.float32) * 100
    bank = base + rng.normal(size=(200, 32)).astype(np.float32) * 1e-3
    query = base + rng.normal(size=(20, 32)).astype(np.float32) * 1e-3
    d, i = knn_search(bank, query, 3)
    rd, ri = _brute(bank, query, 3)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-6)


def test_torch_in_torch_out_and_mixed_inputs():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(100, 4, generator=g), torch.randn(10, 4, generator=g)
    d, i = knn_search(X, Y, 2)
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float32 and i.dtype == torch.int64
    d2, i2 = knn_search(X.numpy(), Y, 2)  # mixed: torch out
    assert isinstance(d2, torch.Tensor)
    torch.testing.assert_close(d, d2)
    s = knn_score(X.double(), Y, 2)  # dtype promotion
    assert s.dtype == torch.float64
    images = torch.rand(30, 1, 4, 4, generator=g)  # trailing dims are flattened
    np.testing.assert_array_equal(knn_search(images, images[:3], 1)[1].numpy().ravel(), [0, 1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(100, 32)).astype(np.float32)
    dc, ic = knn_search(torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda(), 5)
    np.testing.assert_array_equal(ic.cpu().numpy(), knn_search(X, Y, 5)[1])


@pytest.mark.parametrize('call,msg', [
    (lambda X: knn_search(X, X[:, :2], 1), 'same number of features'),
    (lambda X: knn_search(X, X, 0), 'k must be'),
    (lambda X: knn_search(X, X, 11), 'k must be'),
    (lambda X: knn_search(X, X, 10, exclude_self=True), 'k must be'),
    (lambda X: knn_search(X, X[:3], 1, exclude_self=True), 'exclude_self'),
    (lambda X: knn_search(X[:0], X, 1), 'non-empty'),
    (lambda X: knn_search(np.where(X > 0, np.nan, X), X, 1), 'finite'),
    (lambda X: knn_search(X, X, 1, chunk_size=0), 'chunk_size'),
])
def test_knn_errors(call, msg):
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match=msg):
        call(X)


def test_knn_type_errors():
    with pytest.raises(TypeError, match='numpy array or a torch.Tensor'):
        knn_search([[0.0]], np.zeros((1, 1)), 1)
    with pytest.raises(TypeError, match='k must be an int'):
        knn_search(np.zeros((2, 1)), np.zeros((1, 1)), 1.0)


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


# ---------------------------------------------------------------- baselines
@pytest.mark.parametrize('method', ['knn', 'iforest', 'lof'])
def test_baselines_separate_obvious_anomalies(method):
    rng = np.random.default_rng(0)
    tr = rng.normal(size=(300, 4)); te = np.r_[rng.normal(size=(40, 4)), rng.normal(size=(40, 4)) + 7]
    y = np.r_[np.zeros(40), np.ones(40)]
    s = baseline_scores(tr, te, method, seed=3)
    assert s.shape == (80,) and s.dtype == np.float64
    assert auroc(y, s) == 1.0
    np.testing.assert_array_equal(s, baseline_scores(tr, te, method, seed=3))  # deterministic given seed


def test_baseline_values_against_sklearn():
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    rng = np.random.default_rng(1)
    tr, te = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    np.testing.assert_allclose(baseline_scores(tr, te, 'iforest', seed=5),
                               -IsolationForest(random_state=5).fit(tr).score_samples(te))
    np.testing.assert_allclose(baseline_scores(tr, te, 'lof', n_neighbors=10),
                               -LocalOutlierFactor(n_neighbors=10, novelty=True).fit(tr).score_samples(te))
    ref = NearestNeighbors(n_neighbors=3).fit(tr).kneighbors(te)[0].mean(1)
    np.testing.assert_allclose(baseline_scores(tr, te, 'knn'), ref, rtol=1e-12)
    images = rng.random(size=(60, 1, 3, 3))  # images are flattened per row
    assert baseline_scores(images[:40], images[40:], 'knn').shape == (20,)
    with pytest.raises(ValueError, match='method'):
        baseline_scores(tr, te, 'ocsvm')


# ---------------------------------------------------------------- model scores, protocols, detector
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from hyperlatent.data import load_dataset  # noqa: E402
from hyperlatent.detect import (MODEL_SCORES, BetaObjective, LatentBank, VAEDetector, conditional_protocol,  # noqa: E402
                                model_scores, per_sample_kl, unconditional_protocol, vae_trainer)


def test_per_sample_kl_closed_form_for_gaussian():
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(7, 5, generator=g), 0.3 * torch.randn(7, 5, generator=g)
    bank = LatentBank(torch.randn(50, 5, generator=g), torch.zeros(50, 5))
    ref = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum(1)  # KL(N(mu, s^2) || N(0, 1)) written out
    torch.testing.assert_close(per_sample_kl(BetaObjective(), mu, lv, bank), ref)


class _Identity(torch.nn.Module):
    "A 'VAE' whose encoder mean is the input itself and whose decoder returns its input: scores are checkable by hand."
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return x + 0 * self.w, torch.zeros_like(x)

    def decode(self, z):
        return z * 0.5  # reconstruction error of x = |x - x/2|^2 = |x|^2 / 4


def test_model_scores_by_hand():
    from hyperlatent.detect import FittedModel
    bank_x = torch.tensor([[3., 0.], [3.5, 0.], [4., 0.], [0., 3.]])
    fm = FittedModel(_Identity(), None, beta=2.0)
    bank = LatentBank(bank_x, torch.zeros_like(bank_x))
    q = torch.tensor([[3.5, 0.5], [0., -3.]])
    s = model_scores(fm, bank, q, k=1)
    np.testing.assert_allclose(s['knn'], [0.5, np.sqrt(18.0)])  # nearest: (3.5, 0) and (3, 0)
    np.testing.assert_allclose(s['recon'], (q ** 2).sum(1) / 4)
    np.testing.assert_allclose(s['elbo'], (q ** 2).sum(1) / 4 + 2.0 * 0.5 * (q ** 2).sum(1))  # KL = |mu|^2/2 at sigma=1
    np.testing.assert_allclose(s['radius'], [abs(np.hypot(3.5, .5) - 3.25), 0.25], rtol=1e-6)  # median radius (3+3.5)/2
    mean_dir = (bank_x / bank_x.norm(dim=1, keepdim=True)).mean(0)
    mean_dir = mean_dir / mean_dir.norm()
    np.testing.assert_allclose(s['angular'], 1 - ((q / q.norm(dim=1, keepdim=True)) @ mean_dir).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match='scores must be among'):
        model_scores(fm, bank, q, scores=('likelihood',))


@pytest.fixture(scope='module')
def digits():
    return load_dataset('digits', split='train'), load_dataset('digits', split='test')


def test_unconditional_protocol_table(digits):
    tr, te = digits
    r = unconditional_protocol(tr, te, {'beta': vae_trainer('beta', latent_dim=4, epochs=2)}, held_out=[3, 7],
                               baselines=('knn', 'iforest'), latent_baselines=('iforest',))
    t = r.table
    assert set(t.split) == {'loco_3', 'loco_7'}
    assert len(t) == 2 * (2 + len(MODEL_SCORES) + 1)  # per split: 2 pixel baselines + 5 model scores + latent IF
    assert not t.duplicated(['split', 'model', 'score', 'seed']).any()
    for split, c in (('loco_3', 3), ('loco_7', 7)):
        np.testing.assert_array_equal(r.labels[split], (te.y == c).numpy())
    row = t[(t.split == 'loco_3') & (t.model == 'pixel') & (t.score == 'knn')].iloc[0]
    # the pixel kNN baseline is independent of the VAE: recompute it with sklearn
    normal = tr.x[tr.y != 3].reshape(-1, 64).numpy()
    ref = NearestNeighbors(n_neighbors=3).fit(normal).kneighbors(te.x.reshape(-1, 64).numpy())[0].mean(1)
    assert row.auroc == pytest.approx(roc_auc_score((te.y == 3).numpy(), ref), abs=1e-12)
    f, tp = r.roc[('loco_3', 'pixel', 'knn', 0)]
    assert f[0] == 0 and tp[-1] == 1
    assert set(r.summary().columns) >= {'model', 'score', 'auroc_mean', 'fpr95_mean'}


def test_conditional_protocol_uses_labels(digits):
    tr, te = digits
    r = conditional_protocol(tr, te, {'full': vae_trainer('full', latent_dim=10, epochs=2, batch_size=50)},
                             id_classes=range(5), baselines=(), latent_baselines=(), keep_models=True)
    np.testing.assert_array_equal(r.labels['cond_01234'], (te.y >= 5).numpy())
    fm = r.fitted[('cond_01234', 'full', 0)]
    assert fm.conditional and fm.objective.conditional and fm.objective.n_classes == 5
    assert len(r.table) == len(MODEL_SCORES)


def test_vae_detector_api_and_save_load(tmp_path, digits):
    tr, te = digits
    X = tr.x.reshape(len(tr), -1).numpy()
    det = VAEDetector(latent_dim=4, epochs=3, contamination=0.2)
    assert det.fit(X) is det
    s = det.decision_function(X)
    assert abs(det.labels_.mean() - 0.2) <= 1 / len(X)  # threshold = 80 % quantile of the (self-excluded) training scores
    np.testing.assert_array_equal(det.labels_, det.decision_scores_ > det.threshold_)
    Xt = te.x.reshape(len(te), -1).numpy()
    np.testing.assert_array_equal(det.predict(Xt), det.decision_function(Xt) > det.threshold_)
    s = det.decision_function(Xt)
    p = det.save(tmp_path / 'd.pt')
    assert not list(tmp_path.glob('*.tmp'))  # atomic write leaves no temp file
    loaded = VAEDetector.load(p)
    np.testing.assert_allclose(loaded.decision_function(Xt), s, rtol=1e-6)
    assert loaded.get_params() == det.get_params() and loaded.threshold_ == det.threshold_
    with pytest.raises(ValueError, match='objective must be one of'):
        VAEDetector(objective='nope').fit(X)
    with pytest.raises(ValueError, match='latent_dim >= n_classes'):
        VAEDetector(objective='full', latent_dim=3, epochs=1).fit(X, tr.y.numpy())


# scikit-learn's estimator checks. Every check passes for the default configuration; none is skipped except
# `check_array_api_input`, which scikit-learn itself skips unless SCIPY_ARRAY_API=1 (torch-backed array API
# input is out of scope). The compression/ELBO configuration has one documented expected failure below. Note: the detector follows PyOD's meaning of decision_function/predict (higher =
# more anomalous, 1 = outlier), so it does not declare itself an outlier detector (no OutlierMixin) and
# scikit-learn's outlier-specific checks (which assume +1 inlier / -1 outlier) do not apply.
# With a conditional objective and labels, fit needs latent_dim >= n_classes (one axis per class): 4 below.
@parametrize_with_checks([VAEDetector(latent_dim=2, epochs=2, hidden=(8,), batch_size=16)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


_COMPRESSION_XFAIL = {
    # The compression ELBO score is ~3e6, built from float32 encoder outputs. Encoding a subset instead of the
    # whole array changes the BLAS blocking and hence the last bits of mu, which moves the score by ~1.5e-7
    # relative: just above the 1e-7 tolerance scikit-learn applies to float64 output. (Passes with the default
    # kNN score, see test_sklearn_estimator_checks.)
    'check_methods_subset_invariance': 'float32 encoder round-off (~1.5e-7 relative) on a ~3e6 ELBO score',
}


@pytest.mark.slow
@parametrize_with_checks([VAEDetector(latent_dim=4, objective='full', anomaly_score='elbo', epochs=2, hidden=(8,),
                                      batch_size=16)], expected_failed_checks=lambda est: _COMPRESSION_XFAIL)
def test_sklearn_estimator_checks_compression(estimator, check):
    check(estimator)


@pytest.mark.parametrize('seed', range(3))
def test_grouped_selection_with_massive_ties(seed):
    "Banks large enough for the grouped selection (`_select`), with many exact ties and a ragged tail."
    rng = np.random.default_rng(seed)
    bank = rng.integers(-2, 3, size=(1000 + 7 * seed, 3)).astype(np.float32)
    query = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    for k in (1, 5):
        d, i = knn_search(bank, query, k, chunk_size=16)
        rd, ri = _brute(bank, query, k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(d, rd, rtol=1e-6)
    d, i = knn_search(bank, bank, 4, exclude_self=True)
    rd, ri = _brute(bank, bank, 4, exclude_self=True)
    np.testing.assert_array_equal(i, ri)


def test_select_matches_topk():
    a = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 1000)))
    v, i = det._select(a, 11)
    ref = torch.topk(a, 11, dim=1, largest=False).values
    torch.testing.assert_close(torch.sort(v, 1).values, ref)
    torch.testing.assert_close(torch.gather(a, 1, i), v)


# ---------------------------------------------------------------- memory budget (every buffer, re-ranking included)
@pytest.mark.parametrize('self_', [False, True])
def test_large_d_tiny_budget_matches_brute(monkeypatch, self_):
    "d >> block budget: every buffer (GEMM block, re-ranking, fallback pass) must split down and stay exact."
    rng = np.random.default_rng(7)
    X = rng.random((300, 3000)).astype(np.float32)  # uniform pixels in high d: many rows need the fallback pass
    X[50] = X[10]  # an exact duplicate: a tie at distance 0 in both directions
    Y = X if self_ else rng.random((40, 3000)).astype(np.float32)
    monkeypatch.setattr(det, '_BLOCK_BYTES', 64 * 1024)  # 64 KiB: smaller than one float64 row pair block
    d, i = knn_search(X, Y, 10, exclude_self=self_)
    rd, ri = _brute(X, Y, 10, exclude_self=self_)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-6)


def test_fallback_pass_with_all_rows_tied(monkeypatch):
    "All bank rows equal: no row gets a certificate, the fallback pass must return indices 0..k-1 (lower index first)."
    X = np.ones((700, 40), np.float32)
    monkeypatch.setattr(det, '_BLOCK_BYTES', 32 * 1024)
    d, i = knn_search(X, X[:5] + 1, 4)
    np.testing.assert_array_equal(i, np.tile(np.arange(4), (5, 1)))
    np.testing.assert_allclose(d, np.sqrt(40), rtol=1e-7)
    d, i = knn_search(X, X, 3, exclude_self=True)
    np.testing.assert_array_equal(i[:3], [[1, 2, 3], [0, 2, 3], [0, 1, 3]])


_MEM_SCRIPT = r'''
import json, sys
import numpy as np
import hyperlatent.detect as det
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
X = np.random.default_rng(0).random((3000, 2048), dtype=np.float32)  # 24 MiB of data
det._BLOCK_BYTES = 16 * 2**20
det.knn_search(X[:50], X[:50], 3, exclude_self=True)  # warm up torch's allocator and thread pool
before = hwm()
_, idx = det.knn_search(X, X, 10, exclude_self=True)
print(json.dumps({'extra_mib': hwm() - before, 'idx': idx[:20].tolist()}))
'''


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='peak memory is read from /proc (Linux)')
def test_peak_memory_bounded_by_budget_for_large_d():
    """Peak extra resident memory of a 3000 x 3000 x 2048 self-search with a 16 MiB block budget. Unbounded
    float64 re-ranking buffers of (chunk, k + 8, d) would need ~1.5 GiB here; the budget allows a few blocks plus
    the bank-sized augmented copy (24 MiB)."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', _MEM_SCRIPT], capture_output=True, text=True, check=True, timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res['extra_mib'] < 200, res['extra_mib']
    X = np.random.default_rng(0).random((3000, 2048), dtype=np.float32)
    np.testing.assert_array_equal(res['idx'], _brute(X, X[:20], 11)[1][:, 1:])  # X[i] is its own nearest (distance 0)


def test_overflowing_float32_gram_stays_exact():
    "|x| ~ 1e19 in float32: squared norms overflow (inf - inf = NaN in the GEMM); the float64 passes must still be exact."
    rng = np.random.default_rng(8)
    X, Y = (rng.normal(size=(200, 4)) * 1e19).astype(np.float32), (rng.normal(size=(10, 4)) * 1e19).astype(np.float32)
    d, i = knn_search(X, Y, 3)
    rd, ri = _brute(X, Y, 3)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-6)
