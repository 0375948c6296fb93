"""Oracle tests of hyperlatent.phase: covariance / trivialisation, exact p = 2 critical points, chi_resp,
block-spin kNN accuracy and the phase report (end to end on a tiny digits model)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hyperlatent.hamiltonian import PSpinHamiltonian, classify_phase, local_minima
from hyperlatent.phase import (PhaseReport, block_knn_accuracy, chi_resp, covariance_profile, fit_covariance,
                               load_phase_reports, p2_critical_points, phase_report, phase_reports_table,
                               trivialisation)


# ---------------------------------------------------------------- 1. covariance and trivialisation
def _pspin_fit(d, p, h, R, n_pairs, max_p, seed):
    g = torch.Generator().manual_seed(seed)
    Hs = [PSpinHamiltonian(d, p, field='half', field_strength=h, generator=g) for _ in range(R)]
    prof = covariance_profile(Hs, d, n_pairs=n_pairs, generator=g)
    fit = fit_covariance(prof, max_p=max_p)
    return prof, fit, trivialisation(fit)


def test_covariance_se_matches_gaussian_product_formula():
    # one pair per overlap per realisation: products are independent, Var[XY] = xi(1)^2 + xi(q)^2 (Gaussian field)
    R, d = 300, 8
    prof, _, _ = _pspin_fit(d, 3, 0.0, R, 1, 3, seed=0)
    q = prof['q']
    se_theory = np.sqrt((1 + q ** 6) / R)
    ratio2 = (prof['se'] / se_theory) ** 2
    # mean of 21 (correlated) variance ratios; each has relative sd ~ sqrt(8 / R) = 0.16
    assert 0.8 < ratio2.mean() < 1.25, ratio2
    z = (prof['xi'] - (q ** 3 + prof['xi'][10])) / se_theory  # c_0 shift: xi_hat(0) estimates it
    assert np.abs(z).max() < 4.5


@pytest.mark.parametrize('p,h,seed', [(3, 0.7, 1), (2, 0.5, 2), (3, 0.0, 3)])
def test_pure_pspin_coefficients_and_hc_within_bands(p, h, seed):
    _, fit, tv = _pspin_fit(12, p, h, 100, 8, 3, seed)
    truth = np.zeros(4)
    truth[1] += h * h
    truth[p] += 1.0
    for k in (1, 2, 3):
        assert abs(fit['coef'][k] - truth[k]) < 4 * fit['se'][k], (k, fit['coef'][k], fit['se'][k])
    hc2 = p * (p - 2)  # Fyodorov: h_c^2 = xi''(1) - xi'(1) = p (p - 2) for xi = q^p
    assert abs(tv['hc2'] - hc2) < 4 * tv['hc2_se'] + 1e-12
    assert abs(tv['h2'] - h * h) < 4 * tv['h2_se']
    if p == 3:
        assert tv['hc2_se'] < 0.5 and abs(tv['h_c'] - math.sqrt(3)) < 0.5
        assert abs(tv['ratio'] - h * h / 3) < 4 * tv['ratio_se'] + 1e-12


def test_mixed_model_and_offset_absorbed_by_c0():
    # xi = a^2 q^2 + b^2 q^3 plus a constant energy offset (the centring shift goes into c_0 only)
    d, R, a, b = 10, 100, 0.6, 0.8
    g = torch.Generator().manual_seed(5)
    Hs = []
    for _ in range(R):
        H2, H3 = PSpinHamiltonian(d, 2, generator=g), PSpinHamiltonian(d, 3, generator=g)
        Hs.append(lambda s, H2=H2, H3=H3: a * H2(s) + b * H3(s) + 7.0)
    fit = fit_covariance(covariance_profile(Hs, d, n_pairs=8, generator=g), max_p=4)
    tv = trivialisation(fit)
    truth = [None, 0.0, a * a, b * b, 0.0]
    for k in (1, 2, 3, 4):
        assert abs(fit['coef'][k] - truth[k]) < 4 * fit['se'][k], (k, fit['coef'], fit['se'])
    assert abs(tv['hc2'] - 3 * b * b) < 4 * tv['hc2_se']  # the 2-spin part does not raise the threshold


def test_trivialisation_algebra_exact():
    fit = dict(powers=np.arange(5), coef=np.array([0.3, 4.0, 1.0, 2.0, 0.5]), cov=np.zeros((5, 5)))
    tv = trivialisation(fit)
    assert tv['xi1'] == pytest.approx(2 * 1 + 3 * 2 + 4 * 0.5) and tv['xi2'] == pytest.approx(2 + 6 * 2 + 12 * 0.5)
    assert tv['hc2'] == pytest.approx(tv['xi2'] - tv['xi1']) == pytest.approx(3 * 2 + 8 * 0.5)
    assert tv['ratio'] == pytest.approx(4.0 / 10.0) and not tv['trivial']
    p2 = trivialisation(dict(powers=np.arange(3), coef=np.array([0.0, 0.01, 1.0]), cov=np.zeros((3, 3))))
    assert p2['h_c'] == 0 and p2['ratio'] == math.inf and p2['trivial']  # p = 2: any field trivialises


def test_covariance_bad_input():
    with pytest.raises(ValueError, match='qs'):
        covariance_profile(lambda s: s.sum(-1), 4, qs=[0.5, 1.5])
    with pytest.raises(TypeError, match='energies'):
        covariance_profile(3, 4)
    with pytest.raises(ValueError, match='energy'):
        covariance_profile(lambda s: s, 4)


def test_predicted_hc_separates_minima_counts_pure_p3():
    # the estimated threshold h_c (about sqrt 3) against the existing minima counter: rugged at h = 0, one minimum far above h_c
    d = 10
    _, _, tv = _pspin_fit(d, 3, 0.0, 100, 8, 3, seed=7)
    assert 1.2 < tv['h_c'] < 2.3
    H = PSpinHamiltonian(d, 3, field='half', generator=torch.Generator().manual_seed(0))
    kw = dict(n_starts=32, n_steps=500)
    few = local_minima(H, d, generator=torch.Generator().manual_seed(1), **kw)
    big = local_minima(H.at_field(4 * tv['h_c']), d, generator=torch.Generator().manual_seed(1), **kw)
    assert few['n_converged'] >= 28 and big['n_converged'] >= 28
    assert few['n_minima'] >= 3 and big['n_minima'] == 1, (few['n_minima'], big['n_minima'])


# ---------------------------------------------------------------- 2. exact p = 2 critical points
def _goe(N, seed):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(N, N))
    u = rng.normal(size=N)
    return (G + G.T) / np.sqrt(2 * N), u * np.sqrt(N) / np.linalg.norm(u)


def _poly_roots(J, hv):
    "Real roots of sum_k h_k^2 prod_{j!=k} (l_j - x)^2 - N prod_j (l_j - x)^2 (the cleared secular equation)."
    lam, Q = np.linalg.eigh(J)
    hk, N = Q.T @ hv, len(lam)
    P = np.poly1d([0.0])
    for k in range(N):
        t = np.poly1d([hk[k] ** 2])
        for j in range(N):
            if j != k:
                t = t * np.poly1d([-1.0, lam[j]]) ** 2
        P = P + t
    full = np.poly1d([1.0])
    for j in range(N):
        full = full * np.poly1d([-1.0, lam[j]]) ** 2
    r = (P - N * full).roots
    return np.sort(r.real[np.abs(r.imag) < 1e-6 * (1 + np.abs(r.real))])


def _newton_points(J, hv, n_starts=400, seed=0):
    "Brute force: Newton on F(s, l) = [(J - l) s + h, (|s|^2 - N)/2] from random starts, deduplicated."
    rng = np.random.default_rng(seed)
    N = len(hv)
    found = []
    for _ in range(n_starts):
        s = rng.normal(size=N)
        s *= np.sqrt(N) / np.linalg.norm(s)
        l = float(s @ J @ s + hv @ s) / N
        for _ in range(40):
            F = np.r_[(J - l * np.eye(N)) @ s + hv, 0.5 * (s @ s - N)]
            if np.abs(F).max() < 1e-12:
                break
            Jac = np.block([[J - l * np.eye(N), -s[:, None]], [s[None, :], np.zeros((1, 1))]])
            try:
                step = np.linalg.solve(Jac, -F)
            except np.linalg.LinAlgError:
                break
            s, l = s + step[:N], l + step[N]
        if np.abs(np.r_[(J - l * np.eye(N)) @ s + hv, 0.5 * (s @ s - N)]).max() < 1e-9:
            if not any(np.linalg.norm(s - t) < 1e-6 for t in found):
                found.append(s)
    return found


@pytest.mark.parametrize('N,seed', [(3, 0), (4, 1)])
def test_p2_count_matches_polynomial_and_newton(N, seed):
    J, u = _goe(N, seed)
    for h in (0.02, 0.1, 0.3, 1.0, 3.0):
        res = p2_critical_points(J, h * u)
        roots = _poly_roots(J, h * u)
        assert res['n_critical'] == len(roots), (h, res['lam'], roots)
        np.testing.assert_allclose(np.sort(res['lam']), roots, rtol=1e-6, atol=1e-8)
        if h not in (0.02, 0.3, 3.0):
            continue
        newton = _newton_points(J, h * u, n_starts=200)
        assert res['n_critical'] == len(newton)
        for t in newton:  # the same points
            assert min(np.linalg.norm(t - s) for s in res['points']) < 1e-6
        # the minima are those of the existing Riemannian descent counter
        J_t, h_t = torch.tensor(J), torch.tensor(h * u)
        H = lambda s: -0.5 * ((s @ J_t) * s).sum(-1) - s @ h_t  # noqa: E731
        lm = local_minima(H, N, n_starts=64, generator=torch.Generator().manual_seed(0), gtol=1e-9)
        assert lm['n_minima'] == res['n_minima']


def test_p2_zero_field_and_monotone_in_h():
    N = 30
    J, u = _goe(N, 3)
    res0 = p2_critical_points(J, np.zeros(N))
    assert res0['n_critical'] == 2 * N and res0['n_minima'] == 2
    lam = np.linalg.eigvalsh(J)
    np.testing.assert_allclose(np.sort(res0['lam']), np.repeat(lam, 2))
    np.testing.assert_allclose(np.sort(res0['index']), np.repeat(np.arange(N), 2))  # +-v_k has index N - k - 1 ... 0
    counts = [p2_critical_points(J, h * u)['n_critical'] for h in np.geomspace(1e-5, 10, 25)]
    assert counts[0] == 2 * N and counts[-1] == 2
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # scaling h scales the secular function
    assert all(c % 2 == 0 for c in counts)


def test_p2_field_orthogonal_to_an_eigenvector():
    # h_k = 0 for one direction: lambda = lambda_k solutions appear; Newton is the oracle
    N = 4
    J, u = _goe(N, 4)
    lam, Q = np.linalg.eigh(J)
    for h in (0.05, 0.5, 2.0):
        hv = h * (Q[:, [0, 1, 3]] @ np.array([1.0, -0.7, 0.4]))  # no component along v_2
        res = p2_critical_points(J, hv)
        assert res['n_critical'] == len(_newton_points(J, hv))


def test_p2_bad_input():
    with pytest.raises(ValueError, match='symmetric'):
        p2_critical_points(np.array([[0.0, 1.0], [0.0, 0.0]]), np.ones(2))
    with pytest.raises(ValueError, match='h must'):
        p2_critical_points(np.eye(2) * np.array([1.0, 2.0]), np.ones(3))
    with pytest.raises(ValueError, match='repeated'):
        p2_critical_points(np.eye(3), np.ones(3))


# ---------------------------------------------------------------- 3. chi_resp on the spherical Curie-Weiss model
def _scw_exact(N, T, J=1.0, h=0.0):
    m = np.linspace(-1, 1, 400001)[1:-1]
    lw = (N - 3) / 2 * np.log1p(-m * m) + N / T * (J * m * m / 2 + h * m)
    w = np.exp(lw - lw.max())
    Z = np.trapezoid(w, m)
    mean = np.trapezoid(w * m, m) / Z
    return mean, N / T * (np.trapezoid(w * m * m, m) / Z - mean ** 2)


@pytest.mark.parametrize('T,fields', [(2.0, [-0.1, 0.1, 0.3]), (1.5, [-0.05, 0.05])])
def test_chi_resp_spherical_curie_weiss(T, fields):
    N = 32
    cw = lambda h: (lambda s: -(1.0 / (2 * N)) * s.sum(-1) ** 2 - h * s.sum(-1))  # noqa: E731
    cr = chi_resp(cw, fields, N, temperature=T, n_chains=128, n_steps=300, seed=0)
    m_ex = np.array([_scw_exact(N, T, h=h)[0] for h in fields])
    chi_fd = np.diff(m_ex) / np.diff(fields)
    assert np.all(np.abs(cr['m'] - m_ex) < 4 * cr['m_se'] + 2e-3), (cr['m'], m_ex, cr['m_se'])
    assert np.all(np.abs(cr['chi'] - chi_fd) < 4 * cr['chi_se'] + 0.02), (cr['chi'], chi_fd, cr['chi_se'])
    # the exact finite difference is close to the fluctuation-dissipation chi = N Var(m) / T at the midpoint,
    # which above T_c = J is near the mean-field 1 / (T - J)
    mid = (fields[0] + fields[1]) / 2
    assert chi_fd[0] == pytest.approx(_scw_exact(N, T, h=mid)[1], rel=0.03)
    assert _scw_exact(4000, T)[1] == pytest.approx(1 / (T - 1), rel=0.02)


def test_chi_resp_bad_input():
    with pytest.raises(ValueError, match='fields'):
        chi_resp(lambda h: (lambda s: s.sum(-1)), [0.1, 0.0], 4)
    with pytest.raises(TypeError, match='hamiltonian'):
        chi_resp(3, [0.0, 0.1], 4)


# ---------------------------------------------------------------- 4. block-spin kNN accuracy
def _two_class(signal, n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    sign = np.where(y == 0, 1.0, -1.0)[:, None]
    return sign * signal + rng.normal(size=(n, d)), y


def test_block_knn_signal_everywhere_vs_one_block():
    d = 24
    every = np.full(d, 1.5)
    one = np.zeros(d)
    one[:2] = [3.0, -3.0]  # zero-sum inside the first block of every size b >= 2
    (a_tr, y), (a_te, yq) = _two_class(every, seed=0), _two_class(every, seed=1)
    res = block_knn_accuracy(a_tr, y, a_te, yq, block_sizes=[1, 2, 4, 8, 12])
    assert res['n_blocks'] == [24, 12, 6, 3, 2] and min(res['accuracy']) > 0.97
    (o_tr, y), (o_te, yq) = _two_class(one, seed=2), _two_class(one, seed=3)
    res = block_knn_accuracy(o_tr, y, o_te, yq, block_sizes=[1, 2, 4, 8, 12])
    assert res['accuracy'][0] > 0.8
    band = 4 * math.sqrt(0.25 / len(yq))  # label-independent coarse features: accuracy ~ Binomial(n, 1/2) / n
    assert all(abs(a - 0.5) < band for a in res['accuracy'][1:]), res


def test_block_knn_b1_equals_plain_knn_on_spins():
    from sklearn.neighbors import KNeighborsClassifier
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(200, 6)), rng.integers(0, 3, 200)
    zq, yq = rng.normal(size=(100, 6)), rng.integers(0, 3, 100)
    s = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True) * np.sqrt(6)  # noqa: E731
    ref = KNeighborsClassifier(1).fit(s(z), y).score(s(zq), yq)
    assert block_knn_accuracy(z, y, zq, yq, block_sizes=[1], k=1)['accuracy'][0] == pytest.approx(ref)


# ---------------------------------------------------------------- 5. phase report, end to end on digits
@pytest.fixture(scope='module')
def digits_model():
    from hyperlatent.data import load_dataset
    from hyperlatent.train import fit
    from hyperlatent.vae import make_objective, mlp_vae
    tr, te = load_dataset('digits', split='train'), load_dataset('digits', split='test')
    ktr, kte = tr.y != 9, te.y != 9
    torch.manual_seed(0)
    vae = mlp_vae((1, 8, 8), 8, hidden=(64,), project=True)
    fit(vae, (tr.x[ktr], tr.y[ktr]), make_objective('beta', 8), epochs=4, batch_size=128, progress=False, seed=0,
        device='cpu')
    data = {'train': (tr.x[ktr], tr.y[ktr]), 'test': (te.x[kte], te.y[kte]), 'ood': te.x[~kte]}
    return vae, data


def test_phase_report_end_to_end(digits_model, tmp_path):
    from hyperlatent.knn import knn_score
    from hyperlatent.leakage import class_leakage
    from hyperlatent.metrics import detection_metrics
    vae, data = digits_model
    rep = phase_report(vae, data, name='m0', n_hamiltonians=4, n_pairs=4)
    with torch.no_grad():
        mu = {k: vae.encode(data[k][0] if k != 'ood' else data[k])[0].double().numpy() for k in data}
    # every number is the one the wrapped functions give
    det = detection_metrics(np.r_[np.zeros(len(mu['test'])), np.ones(len(mu['ood']))],
                            np.r_[knn_score(mu['train'], mu['test'], 3), knn_score(mu['train'], mu['ood'], 3)])
    for k in ('auroc', 'fpr95', 'aupr_ood'):
        assert rep.metrics[k] == pytest.approx(det[k], abs=1e-12)
    ph = classify_phase(torch.from_numpy(mu['test']))
    assert rep.phase == ph['phase'] and rep.metrics['chi_norm'] == pytest.approx(ph['chi_norm'])
    assert rep.metrics['mean_R'] == pytest.approx(ph['mean'])
    cl = class_leakage(mu['test'], data['test'][1].numpy(), k=10)
    assert rep.metrics['leakage'] == pytest.approx(cl.leakage)
    assert rep.metrics['regime'] in ('well-posed', 'caution', 'ill-posed')
    assert (rep.metrics['regime'] == 'ill-posed') == any('ill-posed' in w for w in rep.warnings)
    m = rep.metrics
    if m['hc2'] > 0:
        assert m['trivialisation_ratio'] == pytest.approx(m['h2'] / m['hc2']) and m['trivial'] == (m['h2'] > m['hc2'])
    else:  # h_c^2 <= 0: stored as None (JSON), trivial iff there is any field
        assert m['trivialisation_ratio'] is None and m['trivial'] == (m['h2'] > 0)
    assert m['h_c'] == pytest.approx(math.sqrt(max(m['hc2'], 0)))
    assert rep.block_knn['accuracy'][0] == pytest.approx(rep.metrics['knn_acc_b1'])
    # density of P(R) integrates to 1
    assert sum(rep.overlap['density']) * 2 / len(rep.overlap['density']) == pytest.approx(1.0)
    t = rep.table
    assert isinstance(t, pd.DataFrame) and {'group', 'quantity', 'value'} <= set(t.columns)
    assert t.set_index('quantity').loc['auroc', 'value'] == rep.metrics['auroc']
    fig = rep.figure()
    assert len(fig.axes) == 5
    import matplotlib.pyplot as plt
    plt.close(fig)
    # save / load round trip, as `hyperlatent report` reads it
    rep.save(tmp_path / 'phase_reports' / 'm0')
    assert (tmp_path / 'phase_reports' / 'm0' / 'phase_report.png').stat().st_size > 5000
    json.loads((tmp_path / 'phase_reports' / 'm0' / 'phase_report.json').read_text())
    back = load_phase_reports(tmp_path)
    assert list(back) == ['m0'] and back['m0'].metrics == rep.metrics
    tab = phase_reports_table(tmp_path)
    assert list(tab['name']) == ['m0'] and tab['auroc'][0] == pytest.approx(rep.metrics['auroc'])
    assert load_phase_reports(tmp_path / 'nothing') == {}


def test_phase_report_bad_data(digits_model):
    vae, data = digits_model
    with pytest.raises(ValueError, match="'train', 'test'"):
        phase_report(vae, {'test': data['test']})
    with pytest.raises(ValueError, match='labels'):
        phase_report(vae, {'train': data['train'], 'test': data['ood']})
