"""knn_search / knn_score with backend='faiss' (issue 11 §5): faiss proposes candidates, the float64 re-ranking and the
certificate decide, so the results are those of the torch backend bit for bit and of a brute-force numpy oracle
(float64 distances, ties by the lower bank index), including duplicates, exact ties and exclude_self."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperlatent.knn as knn
from hyperlatent.knn import knn_score, knn_search

faiss = pytest.importorskip('faiss')


def _oracle(bank, query, k, exclude_self=False):
    "Brute force in float64 numpy: all distances, then a lexicographic (distance, index) sort per row."
    b, q = np.asarray(bank, np.float64), np.asarray(query, np.float64)
    D = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(D, np.inf)
    idx = np.stack([np.lexsort((np.arange(len(b)), row))[:k] for row in D])
    return np.take_along_axis(D, idx, 1), idx


def _both(bank, query, k, **kw):
    t = knn_search(bank, query, k, backend='torch', **kw)
    f = knn_search(bank, query, k, backend='faiss', **kw)
    return t, f


@pytest.mark.parametrize('n,m,d,k,chunk', [(500, 70, 8, 5, None), (2000, 300, 64, 3, 37), (300, 300, 3, 10, 1),
                                           (40, 25, 128, 40, None), (5000, 19, 32, 1, None), (5000, 64, 32, 3, None)])
def test_faiss_equals_torch_and_oracle_on_random_data(n, m, d, k, chunk):
    rng = np.random.default_rng(n + d)
    X, Y = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)
    (td, ti), (fd, fi) = _both(X, Y, k, chunk_size=chunk)
    np.testing.assert_array_equal(fi, ti); np.testing.assert_array_equal(fd, td)
    assert fd.dtype == np.float32 and fi.dtype == np.int64
    rd, ri = _oracle(X, Y, k)
    np.testing.assert_array_equal(fi, ri)
    np.testing.assert_allclose(fd, rd, rtol=1e-6)


def test_faiss_exclude_self_and_duplicates_take_the_second_pass(monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    # 2-3 copies of each point (re-ranked among the candidates) and 20 copies of 10 points: more exact ties than
    # candidates, so the certificate fails; faiss's order among the copies is arbitrary, ours is not
    Xd = np.concatenate([X, X, X[:50], np.repeat(X[400 - 10:], 20, axis=0)])
    calls = []
    real = knn._brute_rows
    monkeypatch.setattr(knn, '_brute_rows', lambda *a, **kw: calls.append(len(a[3])) or real(*a, **kw))
    (td, ti), (fd, fi) = _both(Xd, Xd, 4, exclude_self=True)
    np.testing.assert_array_equal(fi, ti); np.testing.assert_array_equal(fd, td)
    rd, ri = _oracle(Xd, Xd, 4, exclude_self=True)
    np.testing.assert_array_equal(fi, ri); np.testing.assert_allclose(fd, rd, rtol=1e-6, atol=1e-7)
    assert calls, 'the duplicates should have failed the certificate (second pass never ran)'
    # each row's nearest is a copy at distance 0 (not itself), the lowest-index copy first
    np.testing.assert_array_equal(fd[:, 0], 0)
    assert (fi[:, 0] != np.arange(len(Xd))).all()
    for r in range(850, len(Xd)):  # the 20-copy rows: the 4 lowest-index other copies of the same point, all at 0
        p = 390 + (r - 850) // 20
        copies = [c for c in [p, 400 + p] + list(850 + 20 * (p - 390) + np.arange(20)) if c != r]
        np.testing.assert_array_equal(fi[r], copies[:4]); np.testing.assert_array_equal(fd[r], 0)



@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans())
def test_faiss_ties_match_lexicographic_oracle(n, m, d, seed, self_):
    "Small-integer float32 data: many exact ties and duplicates; order must be (distance, lower index)."
    rng = np.random.default_rng(seed)
    bank = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    query = bank if self_ else rng.integers(-2, 3, size=(m, d)).astype(np.float32)
    kmax = n - 1 if self_ else n
    if kmax < 1:
        return
    k = int(rng.integers(1, kmax + 1))
    chunk = int(rng.integers(1, 8))
    (td, ti), (fd, fi) = _both(bank, query, k, exclude_self=self_, chunk_size=chunk)
    rd, ri = _oracle(bank, query, k, exclude_self=self_)
    np.testing.assert_array_equal(fi, ri); np.testing.assert_array_equal(fi, ti)
    np.testing.assert_array_equal(fd, td)
    np.testing.assert_allclose(fd, rd, rtol=1e-7, atol=0)  # sqrt of small integers


def test_faiss_close_pairs_far_from_the_origin_are_exact():
    "Cancellation in |q|^2 + |b|^2 - 2 q.b: points 1e-3 apart at radius ~1000; faiss's float32 values are useless here."
    rng = np.random.default_rng(5)
    base = rng.normal(size=(1, 32)).astype(np.float32) * 100
    bank = base + rng.normal(size=(300, 32)).astype(np.float32) * 1e-3
    query = base + rng.normal(size=(30, 32)).astype(np.float32) * 1e-3
    (td, ti), (fd, fi) = _both(bank, query, 3)
    rd, ri = _oracle(bank, query, 3)
    np.testing.assert_array_equal(fi, ri); np.testing.assert_array_equal(fi, ti); np.testing.assert_array_equal(fd, td)
    np.testing.assert_allclose(fd, rd, rtol=1e-6)


def test_faiss_high_dimension_and_torch_tensors():
    rng = np.random.default_rng(7)
    X, Y = rng.random((800, 784), dtype=np.float32), rng.random((50, 784), dtype=np.float32)
    (td, ti), (fd, fi) = _both(torch.from_numpy(X), torch.from_numpy(Y), 10)
    assert isinstance(fd, torch.Tensor) and fd.dtype == torch.float32
    assert torch.equal(fi, ti) and torch.equal(fd, td)
    np.testing.assert_array_equal(fi.numpy(), _oracle(X, Y, 10)[1])
    np.testing.assert_array_equal(knn_score(X, Y, 10, backend='faiss'), knn_score(X, Y, 10, backend='torch'))


def test_auto_uses_torch_and_faiss_is_opt_in_for_cpu_float32_only(monkeypatch):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(100, 4)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    used = []
    real = knn._faiss_search
    monkeypatch.setattr(knn, '_faiss_search', lambda *a, **kw: used.append(1) or real(*a, **kw))
    knn_search(X, Y, 2); assert used == []  # 'auto' is torch (faster here, bench/bench_knn.py)
    knn_search(X, Y, 2, backend='faiss'); assert used == [1]
    knn_search(torch.from_numpy(X), torch.from_numpy(Y), 2, backend='faiss'); assert used == [1, 1]
    knn_search(X, Y, 2, backend='torch'); assert used == [1, 1]
    with pytest.raises(ValueError, match='float32'):
        knn_search(X.astype(np.float64), Y.astype(np.float64), 2, backend='faiss')
    with pytest.raises(ValueError, match='backend must be one of'):
        knn_search(X, Y, 2, backend='annoy')
    with pytest.raises(ValueError, match='backend must be one of'):
        knn_score(X, Y, 2, backend=None)
    # without faiss: 'auto' still works, 'faiss' says how to install it
    monkeypatch.setattr(knn, '_faiss', lambda: None)
    np.testing.assert_array_equal(knn_search(X, Y, 2)[1], _oracle(X, Y, 2)[1]); assert used == [1, 1]
    with pytest.raises(ImportError, match='faiss-cpu'):
        knn_search(X, Y, 2, backend='faiss')


@pytest.mark.parametrize('m', [5, 300])  # faiss: direct sum of squares below 20 queries, a GEMM expansion above
@pytest.mark.parametrize('scale', [1.0, 1e3])
def test_faiss_values_obey_the_rounding_bound_the_certificate_assumes(m, scale):
    "The assumption behind the faiss backend: |faiss value - exact squared distance| <= 2 gamma_{d+2} (|q|^2 + max|b|^2)."
    rng = np.random.default_rng(11)
    d = 96
    base = rng.normal(size=(1, d)) * scale
    B = (base + rng.normal(size=(2000, d))).astype(np.float32)
    Q = (base + rng.normal(size=(m, d))).astype(np.float32)
    index = faiss.IndexFlatL2(d); index.add(B)
    D, I = index.search(Q, 20)
    b64, q64 = B.astype(np.float64), Q.astype(np.float64)
    exact = ((q64[:, None, :] - b64[I]) ** 2).sum(-1)
    u = np.finfo(np.float32).eps / 2
    gamma = (d + 2) * u / (1 - (d + 2) * u)
    tau = 2 * gamma * ((q64 ** 2).sum(1) + (b64 ** 2).sum(1).max())
    err = np.abs(D.astype(np.float64) - exact)
    assert (err <= tau[:, None]).all(), float((err / tau[:, None]).max())
    assert knn._FAISS_SAFETY * tau.min() > 0 and knn._FAISS_SAFETY >= 1
