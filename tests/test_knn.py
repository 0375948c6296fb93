"""Tests of hyperlatent.knn (exact chunked kNN search) against independent oracles (scikit-learn brute force,
a float64 lexicographic brute-force oracle)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.neighbors import NearestNeighbors

import hyperlatent.knn as knn
from hyperlatent.knn import knn_score, knn_search



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
    monkeypatch.setattr(knn, '_BLOCK_BYTES', 8 * 16 * 50)  # 16 query rows x 50 bank rows
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
    v, i = knn._select(a, 11)
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
    monkeypatch.setattr(knn, '_BLOCK_BYTES', 64 * 1024)  # 64 KiB: smaller than one float64 row pair block
    d, i = knn_search(X, Y, 10, exclude_self=self_)
    rd, ri = _brute(X, Y, 10, exclude_self=self_)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-6)


def test_fallback_pass_with_all_rows_tied(monkeypatch):
    "All bank rows equal: no row gets a certificate, the fallback pass must return indices 0..k-1 (lower index first)."
    X = np.ones((700, 40), np.float32)
    monkeypatch.setattr(knn, '_BLOCK_BYTES', 32 * 1024)
    d, i = knn_search(X, X[:5] + 1, 4)
    np.testing.assert_array_equal(i, np.tile(np.arange(4), (5, 1)))
    np.testing.assert_allclose(d, np.sqrt(40), rtol=1e-7)
    d, i = knn_search(X, X, 3, exclude_self=True)
    np.testing.assert_array_equal(i[:3], [[1, 2, 3], [0, 2, 3], [0, 1, 3]])


_MEM_SCRIPT = r'''
import json, sys
import numpy as np
import hyperlatent.knn as det
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


def test_old_import_path_is_the_same_object():
    "hyperlatent.detect re-exports the kNN machinery: the old import path still works and is the same object."
    import hyperlatent.detect as det
    from hyperlatent.detect import knn_score as ks, knn_search as kq
    assert ks is knn.knn_score and kq is knn.knn_search
    assert {'knn_search', 'knn_score'} <= set(det.__all__)


def test_knn_module_imports_torch_only():
    "hyperlatent.knn pulls in neither scikit-learn nor the vae/train/detect modules."
    import subprocess
    import sys
    code = ('import sys, hyperlatent.knn; bad = [m for m in ("sklearn", "hyperlatent.vae", "hyperlatent.train", '
            '"hyperlatent.detect") if m in sys.modules]; print(bad); assert not bad')
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True)


def test_augmented_bank_gram_identity():
    "[q, 1] @ _augmented_bank(B).T + |q|^2 == |q - b|^2 (closed form), and -2 b is copied exactly."
    g = torch.Generator().manual_seed(3)
    B, Q = torch.randn(40, 7, generator=g, dtype=torch.float64), torch.randn(9, 7, generator=g, dtype=torch.float64)
    A = knn._augmented_bank(B, (B * B).sum(1))
    assert A.shape == (40, 8) and torch.equal(A[:, :7], -2 * B)
    a = torch.cat([Q, torch.ones(9, 1, dtype=torch.float64)], 1) @ A.T + (Q * Q).sum(1, keepdim=True)
    torch.testing.assert_close(a, torch.cdist(Q, B) ** 2, rtol=1e-12, atol=1e-12)


def test_certificate_contract():
    "Rows whose largest candidate value exceeds a_(k) + 2 tau are certified; the others (bad) get no re-ranking work."
    v = torch.tensor([[0.0, 1.0, 2.0, 9.0], [0.0, 1.0, 1.1, 1.2]], dtype=torch.float64)
    tau = torch.tensor([0.1, 0.1], dtype=torch.float64)
    lim, bad, todo = knn._certificate(v, 2, 100, tau)
    torch.testing.assert_close(lim, torch.tensor([1.2, 1.2], dtype=torch.float64))
    assert bad.tolist() == [False, True]
    assert todo.tolist() == [[True, True, False, False], [False] * 4]
    _, bad, todo = knn._certificate(v, 2, 4, tau)  # every bank row is a candidate: always certified, all re-ranked
    assert not bad.any() and todo.all()
