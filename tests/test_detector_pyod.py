"""VAEDetector as a PyOD detector (issue 14): a `pyod.models.base.BaseDetector` subclass when PyOD is installed, the
same duck-typed surface without it, and image inputs (n, c, h, w) through the conv VAE.

Oracles: PyOD's own BaseDetector methods run on the fitted VAEDetector (threshold, labels, probabilities, confidence),
PyOD's `check_parameter` for the contamination range, PyOD's KNN on the same split as a sanity band for the AUROC,
scikit-learn's roc_auc_score and hand-written z-scores for PyOD's combination utilities, and independent numpy
reductions for the per-channel scaling."""
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import hyperlatent.detect as detect
from hyperlatent.detect import VAEDetector

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- digits split: normal = 0, outliers = 1
def _digits_split():
    X, y = load_digits(return_X_y=True)  # (1797, 64) pixel counts in [0, 16]
    Xa, Xb = X[y == 0], X[y == 1]
    p = np.random.default_rng(0).permutation(len(Xa))
    ntr = 2 * len(Xa) // 3
    Xtr = Xa[p[:ntr]]  # unsupervised training on normal rows only
    Xte = np.r_[Xa[p[ntr:]], Xb[:60]]
    yte = np.r_[np.zeros(len(Xa) - ntr), np.ones(60)].astype(int)
    return Xtr, Xte, yte


@pytest.fixture(scope='module')
def digits_fit():
    Xtr, Xte, yte = _digits_split()
    det = VAEDetector(latent_dim=4, epochs=10, hidden=(64, 32), random_state=0).fit(Xtr)
    return det, Xtr, Xte, yte


def _null_auroc_sd(n0: int, n1: int) -> float:
    "Standard deviation of the AUROC of random scores (Mann-Whitney U under H0, no ties)."
    return float(np.sqrt((n0 + n1 + 1) / (12 * n0 * n1)))


def test_is_pyod_base_detector(digits_fit):
    pyod_base = pytest.importorskip('pyod.models.base')
    det = digits_fit[0]
    assert detect.HAS_PYOD and isinstance(det, pyod_base.BaseDetector) and isinstance(VAEDetector(), pyod_base.BaseDetector)
    from sklearn.base import BaseEstimator, clone, is_outlier_detector
    assert isinstance(det, BaseEstimator) and is_outlier_detector(det)
    # scikit-learn's parameter handling kept (PyOD's copies would also work, but repr/clone must stay sklearn's)
    assert det.get_params()['latent_dim'] == 4 and clone(det).get_params() == det.get_params()
    assert repr(VAEDetector(latent_dim=3)) == 'VAEDetector(latent_dim=3)'


def test_pyod_contract_process_decision_scores(digits_fit):
    base = pytest.importorskip('pyod.models.base')
    det, Xtr, Xte, yte = digits_fit
    assert det.decision_scores_.shape == (len(Xtr),)
    # PyOD's own _process_decision_scores on the same training scores gives the same threshold_/labels_/_mu/_sigma
    ref = type('Ref', (), {})()
    ref.decision_scores_, ref.contamination = det.decision_scores_.copy(), det.contamination
    base.BaseDetector._process_decision_scores(ref)
    assert det.threshold_ == ref.threshold_
    np.testing.assert_array_equal(det.labels_, ref.labels_)
    assert det._mu == ref._mu and det._sigma == ref._sigma
    assert set(np.unique(det.labels_)) <= {0, 1} and det.labels_.dtype == np.int64


def test_overridden_methods_agree_with_pyod_base_implementations(digits_fit):
    base = pytest.importorskip('pyod.models.base')
    B = base.BaseDetector
    det, Xtr, Xte, yte = digits_fit
    np.testing.assert_array_equal(det.predict(Xte), B.predict(det, Xte))
    for method in ('linear', 'unify'):
        np.testing.assert_allclose(det.predict_proba(Xte, method=method), B.predict_proba(det, Xte, method=method),
                                   rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(det.predict_confidence(Xte), B.predict_confidence(det, Xte), rtol=1e-12, atol=1e-15)
    lab, conf = det.predict(Xte, return_confidence=True)
    lab2, conf2 = B.predict(det, Xte, return_confidence=True)
    np.testing.assert_array_equal(lab, lab2); np.testing.assert_allclose(conf, conf2, rtol=1e-12, atol=1e-15)
    # inherited PyOD helpers work on it: rank against the training scores, rejection statistics
    ranks = det._predict_rank(Xte)
    np.testing.assert_array_equal(ranks, np.searchsorted(np.sort(det.decision_scores_), det.decision_function(Xte)))
    with np.errstate(invalid='ignore'), __import__('warnings').catch_warnings():  # PyOD's bound takes sqrt of a
        __import__('warnings').simplefilter('ignore', RuntimeWarning)  # negative number here and clips it at 0
        stats = det.compute_rejection_stats(T=2)
    assert len(stats) == 3 and all(np.isfinite(stats))


def _pyod_knn_with_scores_of(det):
    "A PyOD KNN that carries `det`'s training scores and scores test rows with `det`: PyOD's own code on the same numbers."
    from pyod.models.knn import KNN
    ref = KNN(contamination=det.contamination)
    ref.decision_scores_ = det.decision_scores_.copy()
    ref._process_decision_scores()  # PyOD's threshold_ / labels_ from those scores
    ref.decision_function = det.decision_function  # instance attribute: PyOD's predict/predict_confidence call it
    return ref


def test_predict_with_rejection_is_pyods(digits_fit):
    pytest.importorskip('pyod')
    det, Xtr, Xte, yte = digits_fit
    ref = _pyod_knn_with_scores_of(det)
    assert ref.threshold_ == det.threshold_
    seen = set()
    for T in (0.5, 1, 2, 4, 32):
        with warnings.catch_warnings(record=True) as w_ours:
            warnings.simplefilter('always')
            ours = det.predict_with_rejection(Xte, T=T)
        with warnings.catch_warnings(record=True) as w_pyod:
            warnings.simplefilter('always')
            theirs = ref.predict_with_rejection(Xte, T=T)
        np.testing.assert_array_equal(ours, theirs)  # labels in {0, 1, -2}: -2 = rejected
        assert [str(w.message) for w in w_ours] == [str(w.message) for w in w_pyod]  # same c_r warning
        assert det.rejection_threshold_ == ref.rejection_threshold_
        seen |= set(np.unique(ours).tolist())
        with np.errstate(invalid='ignore'), warnings.catch_warnings():  # PyOD's bound takes sqrt of a negative
            warnings.simplefilter('ignore', RuntimeWarning)  # number here and clips it at 0
            lab, stats = det.predict_with_rejection(Xte, T=T, return_stats=True, c_r=0.2, delta=0.05)
            lab2, stats2 = ref.predict_with_rejection(Xte, T=T, return_stats=True, c_r=0.2, delta=0.05)
        np.testing.assert_array_equal(lab, lab2); np.testing.assert_array_equal(stats, stats2)
    assert -2 in seen and -1 not in seen  # the test exercises rejections, with PyOD's label


def test_contamination_range_matches_pyod_check_parameter():
    utility = pytest.importorskip('pyod.utils.utility')
    X = np.random.default_rng(1).normal(size=(20, 3))
    for c in (-0.1, 0.0, 1e-3, 0.25, 0.5, 0.5000001, 0.7):
        try:  # PyOD's BaseDetector accepts contamination in (0, 0.5]
            utility.check_parameter(c, 0, 0.5, param_name='contamination', include_left=False, include_right=True)
            ok = True
        except ValueError:
            ok = False
        if ok:
            VAEDetector(latent_dim=2, epochs=1, hidden=(8,), contamination=c).fit(X)
        else:
            with pytest.raises(ValueError, match='contamination'):
                VAEDetector(latent_dim=2, epochs=1, hidden=(8,), contamination=c).fit(X)


@pytest.fixture(scope='module')
def digits_scores(digits_fit):
    "Training and test scores of [VAEDetector, PyOD KNN, PyOD IForest] on the digits split, one column each."
    pytest.importorskip('pyod')
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.utils.data import evaluate_print
    from pyod.utils.utility import standardizer
    det, Xtr, Xte, yte = digits_fit
    dets = [det, KNN(), IForest(random_state=0)]
    for d in dets[1:]:
        d.fit(Xtr)
    train = np.column_stack([d.decision_scores_ for d in dets])
    test = np.column_stack([d.decision_function(Xte) for d in dets])
    n1 = int(yte.sum()); n0 = len(yte) - n1
    # margin: 5 standard deviations of a random score's AUROC on this split (0.5 + 5 * 0.053 = 0.77)
    return train, test, yte, 0.5 + 5 * _null_auroc_sd(n0, n1)


def test_digits_auroc_beside_pyod_detectors(digits_scores, capsys):
    from pyod.utils.data import evaluate_print
    from pyod.utils.utility import standardizer
    train, test, yte, floor = digits_scores
    auc = [roc_auc_score(yte, test[:, j]) for j in range(3)]
    assert auc[1] > floor  # sanity: the split is learnable (PyOD KNN on the pixels)
    assert auc[0] > floor and auc[0] >= auc[1] - 0.15, (auc, floor)  # VAEDetector within 0.15 of the KNN oracle
    # PyOD's standardizer: z-scores with the training columns' mean and (population) std
    tr_n, te_n = standardizer(train, test)
    mu, sd = train.mean(0), train.std(0)
    np.testing.assert_allclose(te_n, (test - mu) / sd, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(tr_n, (train - mu) / sd, rtol=1e-10, atol=1e-10)
    assert roc_auc_score(yte, te_n[:, 0]) == auc[0]  # a per-column affine map with sd > 0 keeps the ranking
    evaluate_print('VAEDetector', yte, test[:, 0])
    out = capsys.readouterr().out
    assert out.startswith('VAEDetector ROC:') and f'ROC:{np.round(auc[0], 4)}' in out


def test_pyod_score_combination(digits_scores):
    pytest.importorskip('combo')  # pyod.models.combination imports the optional `combo` package
    from pyod.models.combination import average, maximization
    from pyod.utils.utility import standardizer
    train, test, yte, floor = digits_scores
    _, te_n = standardizer(train, test)
    avg, mx = average(te_n), maximization(te_n)
    np.testing.assert_allclose(avg, te_n.mean(1)); np.testing.assert_allclose(mx, te_n.max(1))
    assert roc_auc_score(yte, avg) > floor and roc_auc_score(yte, mx) > floor


def test_generate_data_flow():
    pytest.importorskip('pyod')
    from pyod.utils.data import generate_data
    X_tr, X_te, y_tr, y_te = generate_data(n_train=200, n_test=300, n_features=5, contamination=0.1, random_state=0)
    det = VAEDetector(latent_dim=3, epochs=15, hidden=(32,), contamination=0.1, random_state=0).fit(X_tr)
    assert det.labels_.shape == y_tr.shape and det.decision_scores_.shape == y_tr.shape
    assert abs(det.labels_.mean() - 0.1) <= 1 / len(X_tr)
    pred = det.predict(X_te)
    assert pred.shape == y_te.shape and set(np.unique(pred)) <= {0, 1}
    # generate_data's outliers are uniform in a wide box around Gaussian inliers: clearly separable
    # (30 test outliers: 5 null standard deviations put the floor at 0.78)
    floor = 0.5 + 5 * _null_auroc_sd(int((y_te == 0).sum()), int(y_te.sum()))
    from pyod.models.knn import KNN
    assert roc_auc_score(y_te, KNN().fit(X_tr).decision_function(X_te)) > floor  # sanity band: PyOD's KNN
    assert roc_auc_score(y_tr, det.decision_scores_) > floor
    assert roc_auc_score(y_te, det.decision_function(X_te)) > floor


# ---------------------------------------------------------------- without PyOD: duck typing, same numbers
_NO_PYOD = textwrap.dedent('''
    import importlib.abc, json, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == 'pyod' or name.startswith('pyod.'):
                raise ImportError('pyod blocked for this test')
    sys.meta_path.insert(0, _Block())
    import numpy as np
    import hyperlatent.detect as detect
    from hyperlatent.detect import VAEDetector
    from sklearn.base import BaseEstimator
    assert not detect.HAS_PYOD and 'pyod' not in sys.modules
    assert VAEDetector.__mro__[1] is BaseEstimator
    X = np.load(sys.argv[1])
    det = VAEDetector(latent_dim=2, epochs=2, hidden=(8,), random_state=0).fit(X[:60])
    Xt = X[60:]
    lab, conf = det.predict(Xt, return_confidence=True)
    print(json.dumps(dict(scores=det.decision_scores_.tolist(), threshold=det.threshold_, labels=det.labels_.tolist(),
                          test=det.decision_function(Xt).tolist(), lab=lab.tolist(), conf=conf.tolist(),
                          lin=det.predict_proba(Xt).tolist(), uni=det.predict_proba(Xt, method='unify').tolist(),
                          rej=det.predict_with_rejection(Xt, T=1).tolist(), mu=det._mu, sigma=det._sigma,
                          rej32=det.predict_with_rejection(Xt, T=32, c_r=0.1).tolist(),
                          stats=det.predict_with_rejection(Xt, T=4, return_stats=True, c_r=0.1)[1],
                          mro=[c.__name__ for c in VAEDetector.__mro__])))
''')


def test_without_pyod_duck_typing_gives_the_same_numbers(tmp_path):
    X = np.random.default_rng(2).normal(size=(90, 6))
    np.save(tmp_path / 'x.npy', X)
    out = subprocess.run([sys.executable, '-c', _NO_PYOD, str(tmp_path / 'x.npy')], capture_output=True, text=True,
                         cwd=ROOT, env={**__import__('os').environ, 'PYTHONPATH': str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 'BaseDetector' not in r['mro']
    det = VAEDetector(latent_dim=2, epochs=2, hidden=(8,), random_state=0).fit(X[:60])  # this process: PyOD if installed
    Xt = X[60:]
    np.testing.assert_allclose(r['scores'], det.decision_scores_, rtol=1e-6)
    np.testing.assert_allclose(r['test'], det.decision_function(Xt), rtol=1e-6)
    # threshold/labels/probabilities from the duck-typed formulas equal those of this process's detector (PyOD's
    # _process_decision_scores when PyOD is installed), applied to the same scores
    s_tr, s_te = np.asarray(r['scores']), np.asarray(r['test'])
    assert r['threshold'] == pytest.approx(np.percentile(s_tr, 90), rel=1e-12)
    np.testing.assert_array_equal(r['labels'], (s_tr > r['threshold']).astype(int))
    assert r['mu'] == pytest.approx(s_tr.mean(), rel=1e-12) and r['sigma'] == pytest.approx(s_tr.std(), rel=1e-12)
    np.testing.assert_array_equal(r['lab'], (s_te > r['threshold']).astype(int))
    lin = np.clip((s_te - s_tr.min()) / (s_tr.max() - s_tr.min()), 0, 1)
    np.testing.assert_allclose(np.asarray(r['lin'])[:, 1], lin, rtol=1e-12, atol=1e-15)
    # PyOD's rejection rule on the duck-typed confidences: -2 where 2 |c - 1/2| <= 1 - 2 exp(-T)
    conf = np.asarray(r['conf'])
    for T, key in ((1, 'rej'), (32, 'rej32')):
        np.testing.assert_array_equal(r[key], np.where(2 * np.abs(conf - 0.5) <= 1 - 2 * np.exp(-T), -2, r['lab']))
    assert -2 in r['rej32']
    if detect.HAS_PYOD:  # the statistics depend only on n, contamination and T: PyOD's own on this process's detector
        with np.errstate(invalid='ignore'), warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            np.testing.assert_array_equal(r['stats'], det.compute_rejection_stats(T=4, c_r=0.1))
        np.testing.assert_array_equal(r['rej32'], _pyod_knn_with_scores_of(det).predict_with_rejection(Xt, T=32, c_r=0.1))
        np.testing.assert_array_equal(r['labels'], det.labels_)
        np.testing.assert_allclose(r['conf'], det.predict_confidence(Xt), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(r['rej'], det.predict_with_rejection(Xt, T=1, c_r=0.1))


# ---------------------------------------------------------------- image inputs -> conv VAE
def _images(n=40, c=3, s=32, seed=0):
    g = np.random.default_rng(seed)
    scale = np.array([1.0, 2.0, 5.0, 0.5][:c])[:, None, None]
    shift = np.array([0.0, -1.0, 3.0, 7.0][:c])[:, None, None]
    return g.uniform(size=(n, c, s, s)) * scale + shift


@pytest.fixture(scope='module')
def image_fit():
    X = _images()
    return VAEDetector(latent_dim=4, epochs=1, batch_size=8, random_state=0).fit(X), X


def test_images_use_the_conv_vae_with_per_channel_scaling(image_fit):
    from hyperlatent.vae import ResidualEncoder
    det, X = image_fit
    assert isinstance(det.fitted_.model.encoder, ResidualEncoder)
    assert det.input_shape_ == (3, 32, 32) and det.n_features_in_ == 3 * 32 * 32
    lo = np.array([X[:, ch].min() for ch in range(3)]); hi = np.array([X[:, ch].max() for ch in range(3)])
    np.testing.assert_array_equal(det.data_min_, lo); np.testing.assert_array_equal(det.data_scale_, hi - lo)
    # the scaled training tensor the VAE saw lies in [0, 1] with every channel touching both ends
    xs = det._scale(X).numpy()
    assert xs.min() >= 0 and xs.max() <= 1 + 1e-6
    np.testing.assert_allclose(xs.min((0, 2, 3)), 0, atol=1e-6); np.testing.assert_allclose(xs.max((0, 2, 3)), 1, atol=1e-6)
    s = det.decision_function(X[:10])
    assert s.shape == (10,) and np.isfinite(s).all()
    np.testing.assert_array_equal(det.decision_function(X[:10].reshape(10, -1)), s)  # flattened rows, C order
    np.testing.assert_array_equal(det.decision_function(torch.from_numpy(X[:10])), s)
    assert det.decision_scores_.shape == (len(X),) and set(np.unique(det.predict(X[:10]))) <= {0, 1}


def test_image_save_load_is_exact(image_fit, tmp_path):
    det, X = image_fit
    s = det.decision_function(X[:12])
    p = det.save(tmp_path / 'img.pt')
    got = VAEDetector.load(p)
    assert got.input_shape_ == (3, 32, 32) and type(got.fitted_.model.encoder) is type(det.fitted_.model.encoder)
    np.testing.assert_array_equal(got.decision_function(X[:12]), s)
    np.testing.assert_array_equal(got.data_min_, det.data_min_)
    assert got.threshold_ == det.threshold_ and got.get_params() == det.get_params()
    np.testing.assert_array_equal(got.predict_proba(X[:12]), det.predict_proba(X[:12]))


def test_one_channel_images_and_small_images_use_the_mlp():
    from hyperlatent.vae import ResidualEncoder
    X = _images(n=24, c=1, s=32, seed=3)[:, 0]  # (n, h, w) -> one channel
    det = VAEDetector(latent_dim=3, epochs=1, batch_size=8).fit(X)
    assert det.input_shape_ == (1, 32, 32) and isinstance(det.fitted_.model.encoder, ResidualEncoder)
    s = det.decision_function(X[:5])
    np.testing.assert_array_equal(det.decision_function(X[:5, None]), s)
    small = _images(n=24, c=2, s=8, seed=4)  # not 32/64 pixels: the MLP on the (2, 8, 8) image
    d2 = VAEDetector(latent_dim=3, epochs=1, batch_size=8, hidden=(16,)).fit(small)
    assert d2.input_shape_ == (2, 8, 8) and not isinstance(d2.fitted_.model.encoder, ResidualEncoder)
    assert d2.data_min_.shape == (2,) and d2.decision_function(small[:3]).shape == (3,)


def test_image_shape_errors_name_x_and_the_expected_shapes(image_fit):
    det, X = image_fit
    with pytest.raises(ValueError, match=r'X must be images \(n, 3, 32, 32\).*\(n, 3072\).*got \(2, 1, 32, 32\)'):
        det.decision_function(X[:2, :1])
    with pytest.raises(ValueError, match=r'X must be images \(n, 3, 32, 32\)'):
        det.decision_function(X[:2, 0])  # (n, h, w) only for one-channel detectors
    with pytest.raises(ValueError, match='3072'):
        det.decision_function(X[:2].reshape(2, -1)[:, :100])
    with pytest.raises(ValueError, match='finite'):
        det.decision_function(np.full((2, 3, 32, 32), np.nan))
    flat = VAEDetector(latent_dim=2, epochs=1, hidden=(8,)).fit(X[:, 0, 0, :8])
    with pytest.raises(ValueError, match=r'X must be \(n, 8\) as in fit'):
        flat.decision_function(X[:2])
    with pytest.raises(ValueError, match='channels, height, width'):
        VAEDetector().fit(np.zeros((5, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match='finite'):
        VAEDetector().fit(np.full((5, 1, 32, 32), np.inf))


def test_format_1_files_still_load_as_feature_row_detectors(tmp_path):
    X = np.random.default_rng(4).normal(size=(30, 5))
    det = VAEDetector(latent_dim=2, epochs=1, hidden=(8,)).fit(X)
    p = det.save(tmp_path / 'new.pt')
    st = torch.load(p, weights_only=True)
    assert st['format'] == 'hyperlatent.VAEDetector/2' and st['input_shape'] == [5]
    del st['input_shape']; st['format'] = 'hyperlatent.VAEDetector/1'  # what the first format wrote
    torch.save(st, tmp_path / 'old.pt')
    old = VAEDetector.load(tmp_path / 'old.pt')
    assert old.input_shape_ == (5,)
    np.testing.assert_array_equal(old.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(old.labels_, det.labels_)
