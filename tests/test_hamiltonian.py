"""Oracle tests for hyperlatent.hamiltonian: brute-force pair loops, closed forms for uniform and von Mises-Fisher
points, the exact finite-N spherical Curie-Weiss law (1-D quadrature), and the reference systems of spec §11."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from hyperlatent.coords import sample_sphere
from hyperlatent.hamiltonian import (LatentHamiltonian, PSpinHamiltonian, PhaseThresholds, block_spin_flow, chi_m,
                                     classify_phase, count_modes, field_direction, gaussian_reference, local_minima, locate_edge,
                                     magnetization, nested_order, overlap_distribution, overlap_stats,
                                     ruggedness, sample_gibbs_sphere, thermal_overlap)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Many tiny products: extra BLAS threads only add contention on the shared 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def A_d(d, kappa):
    "Mean resultant length of the vMF distribution on S^{d-1}: I_{d/2}(k) / I_{d/2-1}(k)."
    return special.ive(d / 2, kappa) / special.ive(d / 2 - 1, kappa)


def vmf(axis, kappa, n, seed):
    return stats.vonmises_fisher(np.asarray(axis, float), kappa).rvs(n, random_state=np.random.default_rng(seed))


# ----------------------------------------------------------------------------- overlaps, brute force

@pytest.mark.parametrize('d', [2, 5, 33])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_overlap_stats_matches_pair_loop(d, dtype):
    rng = np.random.default_rng(d)
    n = 47
    z = rng.normal(size=(n, d)) + 0.6 * rng.normal(size=d)  # a shared component: mean far from 0
    z *= rng.uniform(0.1, 5.0, size=(n, 1))  # radii must not matter
    y = rng.integers(0, 3, size=n)
    u = unit(z)
    R, same = [], []
    for i in range(n):
        for j in range(i + 1, n):
            R.append(float(u[i] @ u[j]))
            same.append(y[i] == y[j])
    R, same = np.array(R), np.array(same)
    st = overlap_stats(torch.tensor(z, dtype=dtype), labels=torch.tensor(y))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert st['exact'] and st['n_pairs'] == len(R)
    assert abs(st['mean'] - R.mean()) < tol
    assert abs(st['var'] - R.var()) < tol
    assert abs(st['chi_ovl'] - d * R.var()) < 10 * tol * d
    assert abs(st['chi_sg'] - d * np.mean(R ** 2)) < 10 * tol * d
    assert abs(st['angle'] - math.acos(R.mean())) < 1e-3
    for key, mask in [('same', same), ('diff', ~same)]:
        assert st[key]['n_pairs'] == mask.sum()
        assert abs(st[key]['mean'] - R[mask].mean()) < tol
        assert abs(st[key]['chi_ovl'] - d * R[mask].var()) < 10 * tol * d


def test_u_statistic_identity():
    "Spec §11 O3: the mean over distinct pairs is (|sum u|^2 - n) / (n (n-1))."
    rng = np.random.default_rng(0)
    u = unit(rng.normal(size=(500, 20)) + 0.3)
    S = u.sum(0)
    assert abs(overlap_stats(u)['mean'] - (S @ S - 500) / (500 * 499)) < 1e-13


def test_random_pairs_unbiased():
    "The random-pair estimates average to the exact pair-population values over independent seeds."
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(size=(150, 8)) + 2 * np.eye(8)[0], rng.normal(size=(150, 8)) - 2 * np.eye(8)[1]])
    y = np.repeat([0, 1], 150)
    ex = overlap_stats(z, labels=y)
    est = [overlap_stats(z, labels=y, max_pairs=400, generator=torch.Generator().manual_seed(s)) for s in range(300)]
    for key in ['mean', 'var']:
        vals = np.array([e[key] for e in est])
        assert abs(vals.mean() - ex[key]) < 4 * vals.std() / math.sqrt(len(vals))
    vals = np.array([e['same']['mean'] for e in est])
    assert abs(vals.mean() - ex['same']['mean']) < 4 * vals.std() / math.sqrt(len(vals))
    assert not est[0]['exact'] and est[0]['n_pairs'] == 400
    # max_pairs beyond the number of pairs falls back to the exact computation
    assert overlap_stats(z, max_pairs=10 ** 9)['exact']


@pytest.mark.parametrize('d', [16, 128, 1024])
def test_uniform_sphere_moments(d):
    "Spec §11 O1: E[R] = 0, d Var R = 1; pair overlaps of iid uniform points are pairwise uncorrelated."
    n = 2000
    z = sample_sphere(n, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    st = overlap_stats(z)
    n_pairs = n * (n - 1) / 2
    assert abs(st['mean']) < 5 / math.sqrt(d * n_pairs)
    # Var(d R^2) = 3 d / (d + 2) - 1 + ... <= 2: a sd of about sqrt(2 / n_pairs) for chi_sg
    assert abs(st['chi_sg'] - 1) < 5 * math.sqrt(2 / n_pairs) + 1e-3
    assert abs(st['chi_ovl'] - 1) < 5 * math.sqrt(2 / n_pairs) + 1e-3


@pytest.mark.parametrize('d', [4, 16, 128])
def test_overlap_distribution_matches_beta_law(d):
    "P(R) of uniform points: (R + 1) / 2 ~ Beta((d-1)/2, (d-1)/2) (density (1 - R^2)^((d-3)/2))."
    z = sample_sphere(1500, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = overlap_distribution(z, bins=50)
    a = (d - 1) / 2
    p = np.diff(stats.beta(a, a).cdf((h['edges'].numpy() + 1) / 2))
    counts = h['counts'].numpy()
    assert counts.sum() == 1500 * 1499 // 2
    # pairs are pairwise independent for uniform points; a chi-square statistic over the populated bins
    big = p * counts.sum() > 50
    chi2 = (((counts[big] - p[big] * counts.sum()) ** 2) / (p[big] * counts.sum())).sum()
    assert chi2 < stats.chi2(big.sum() - 1).ppf(0.9999)


def test_overlap_distribution_brute_force_across_tiles():
    "n > 2048 crosses a tile boundary; the counts equal numpy.histogram of all pairs, also split by labels."
    rng = np.random.default_rng(4)
    n, d = 2300, 6
    z = rng.normal(size=(n, d)) + 0.5
    y = rng.integers(0, 4, size=n)
    u = unit(z)
    iu = np.triu_indices(n, 1)
    R = (u @ u.T)[iu]
    same = (y[:, None] == y[None, :])[iu]
    h = overlap_distribution(torch.tensor(z), bins=64, labels=y)
    np.testing.assert_array_equal(h['counts'].numpy(), np.histogram(R, bins=64, range=(-1, 1))[0])
    np.testing.assert_array_equal(h['counts_same'].numpy(), np.histogram(R[same], bins=64, range=(-1, 1))[0])
    np.testing.assert_array_equal(h['counts_diff'].numpy(), np.histogram(R[~same], bins=64, range=(-1, 1))[0])
    # identical points have R = 1 (up to rounding) and land in the last bin, never dropped
    hd = overlap_distribution(torch.ones(5, 3), bins=10)
    assert hd['counts'][-1] == 10 and hd['counts'].sum() == 10


# ----------------------------------------------------------------------------- von Mises-Fisher paramagnet

@pytest.mark.parametrize('kappa', [20.0, 128.0, 512.0])
def test_vmf_paramagnet(kappa):
    "Spec §11 O4: m = A_d(k), E[R] = A_d(k)^2, chi_m = d A_d'(k) with A' = 1 - A^2 - (d-1) A / k."
    d, n = 128, 4000
    axis = field_direction('half', d).numpy()
    X = vmf(axis, kappa, n, int(kappa))
    A = A_d(d, kappa)
    dA = 1 - A * A - (d - 1) / kappa * A
    assert abs(magnetization(X, 'half') - A) < 5 * math.sqrt(dA / n)
    assert abs(chi_m(X, axis) / (d * dA) - 1) < 5 * math.sqrt(2 / n) + 0.02
    st = overlap_stats(X)
    # the U-statistic's variance is dominated by 4 Var(E[R | u_i]) / n = 4 A^2 dA / n
    assert abs(st['mean'] - A * A) < 5 * math.sqrt(4 * A * A * dA / n + 1 / (d * n * n))


def test_vmf_chi_ovl_falls_with_field():
    "Spec §5.2 / O4: a paramagnet has chi_ovl decreasing monotonically with the field (no peak)."
    d = 64
    axis = field_direction('full', d).numpy()
    chis = [overlap_stats(vmf(axis, k, 2000, 7))['chi_ovl'] for k in [1e-3, 32.0, 128.0, 512.0, 2048.0]]
    assert abs(chis[0] - 1) < 0.05
    assert all(a > b for a, b in zip(chis, chis[1:]))


def test_thermal_overlap():
    "q_EA of vMF 'posterior samples' is A_d(k)^2 per input; a pair loop gives the per-input value exactly."
    d, kappa = 32, 50.0
    A = A_d(d, kappa)
    axes = unit(np.random.default_rng(5).normal(size=(40, d)))
    samples = np.stack([vmf(ax, kappa, 50, i) for i, ax in enumerate(axes)])  # (40 inputs, 50 samples, d)
    q = thermal_overlap(torch.tensor(samples))
    assert q['n_samples'] == 50 and q['per_input'].shape == (40,)
    assert abs(q['q_ea'] - A * A) < 0.02
    s0 = unit(samples[0])
    loop = np.mean([s0[a] @ s0[b] for a in range(50) for b in range(50) if a != b])
    assert abs(float(q['per_input'][0]) - loop) < 1e-12
    # the between-input overlap of these random axes is ~0: a different observable
    assert abs(overlap_stats(samples[:, 0])['mean']) < 0.05
    with pytest.raises(ValueError, match='S >= 2'):
        thermal_overlap(torch.zeros(3, 1, 4))


# ----------------------------------------------------------------------------- nested order, block spins

@pytest.mark.parametrize('d', [3, 16, 64])
def test_nested_order_uniform(d):
    "Spec §11 O2: E[cos phi_k] = 0 and (d-k+1) Var[cos phi_k] = 1 for uniform points."
    n = 20000
    no = nested_order(sample_sphere(n, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64))
    k = np.arange(1, d)
    np.testing.assert_allclose(no['reference_var'].numpy(), 1 / (d - k + 1))
    assert np.all(np.abs(no['mean'].numpy()) < 5 * np.sqrt(1 / (d - k + 1) / n))
    # Var of a sample variance ~ 2 v^2 / n (near-Gaussian) to 2.5 v^2 / n (last angle, arcsine law)
    assert np.all(np.abs(no['var'].numpy() * (d - k + 1) - 1) < 5 * math.sqrt(2.5 / n))


def test_nested_order_half_and_full_targets():
    d = 10
    ones = nested_order(torch.ones(4, d, dtype=torch.float64))
    np.testing.assert_allclose(ones['mean'].numpy(), 1 / np.sqrt(d - np.arange(1, d) + 1), atol=1e-12)
    e1 = torch.zeros(3, d, dtype=torch.float64)
    e1[:, 0] = 2.0
    assert float(nested_order(e1)['mean'][0]) == 1.0


def test_block_flow_uniform_power_of_two():
    "Spec §11 O10: M(b) = b^-1/2, flow exponent 1/2, isotropic coarse spins (K Var R = 1; 3-D overlaps ~ U[-1,1])."
    d, n = 128, 3000
    bf = block_spin_flow(sample_sphere(n, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64),
                         block_sizes=[1, 2, 4, 8, 16, 32, 64])
    b = np.array(bf['block_sizes'])
    # E[M^2] = 1/b exactly; the sample mean over n K block spins has relative sd about sqrt(2 / (n K))
    np.testing.assert_allclose(np.array(bf['M']) ** 2 * b, 1, atol=5 * math.sqrt(2 / (n * 2)))
    assert abs(bf['x'] - 0.5) < 0.01
    np.testing.assert_allclose(bf['overlap_chi'], 1, atol=0.05)
    P = bf['projection'].numpy()
    assert abs(np.linalg.norm(P, axis=1).mean() - math.sqrt(3)) < 1e-12
    Pu = unit(P)
    R = (Pu[:1500] * Pu[1500:]).sum(1)  # independent pairs: Archimedes, R ~ Uniform[-1, 1]
    assert stats.kstest(R, stats.uniform(-1, 2).cdf).pvalue > 1e-4


def test_block_flow_array_split_exact_expectation():
    "For d not divisible by b the blocks have sizes b_j (array_split); E[M^2] = mean_j 1/b_j for uniform spins."
    d, n = 100, 20000
    bf = block_spin_flow(sample_sphere(n, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
                         block_sizes=[3, 7])
    for b, K, M in zip(bf['block_sizes'], bf['n_blocks'], bf['M']):
        sizes = [len(a) for a in np.array_split(np.arange(d), K)]
        assert K == d // b
        assert abs(M ** 2 / np.mean(1 / np.array(sizes)) - 1) < 5 * math.sqrt(2 / (n * K))


def test_block_flow_ordered_diagonal():
    "Order along the diagonal: M(b) stays at m for every b, flow exponent 0."
    d = 64
    X = vmf(field_direction('half', d).numpy(), 4000.0, 500, 10)
    bf = block_spin_flow(X)
    m = magnetization(X, 'half')
    assert abs(bf['x']) < 0.05
    assert all(abs(M - m) < 0.1 for M in bf['M'][1:])


# ----------------------------------------------------------------------------- phase labels (O12)

def test_phase_labeller_o12():
    "Spec §11 O12 at full size: uniform -> disordered, one vMF island -> ordered, 10 islands -> edge."
    d, gen = 128, lambda s: torch.Generator().manual_seed(s)
    uni = sample_sphere(5000, d, generator=gen(11), dtype=torch.float64)
    one = vmf(field_direction('half', d).numpy(), 2048.0, 5000, 12)
    isl = np.concatenate([vmf(np.eye(d)[10 * k], 512.0, 500, 20 + k) for k in range(10)])
    a = classify_phase(uni, max_pairs=200_000, generator=gen(1))
    b = classify_phase(one, max_pairs=200_000, generator=gen(2))
    c = classify_phase(isl, max_pairs=200_000, generator=gen(3))
    assert a['phase'] == 'disordered' and abs(a['mean']) < 0.005 and abs(a['chi_ovl'] - 1) < 0.05 and a['n_modes'] == 1
    A = A_d(d, 2048.0)
    assert b['phase'] == 'ordered' and abs(b['mean'] - A * A) < 0.005 and b['chi_ovl'] < 0.05
    A5 = A_d(d, 512.0)
    p = 1 / 10  # fraction of same-island pairs is about 1/K
    assert c['phase'] == 'edge' and c['multimodal'] and c['n_modes'] == 2
    assert abs(c['mean'] - p * A5 * A5) < 0.01 and c['chi_ovl'] > d * A5 ** 4 * p * (1 - p) * 0.9
    assert 0.05 < c['mass_above_0_3'] < 0.15


@pytest.mark.parametrize('kappa,expected', [(20.0, 'disordered'), (128.0, 'ordered'), (512.0, 'ordered'), (4096.0, 'ordered')])
def test_phase_labels_along_a_vmf_field(kappa, expected):
    """A single vMF island (E[R] = A^2 = 0.02, 0.38, 0.78, 0.97) is a paramagnet in a field: disordered when the
    field is weak, otherwise ordered (spec §5.2: its chi_ovl falls monotonically with the field, no edge).
    The old rule called kappa = 128 and 512 'edge' from the E[R] band alone; chi_norm < 1 here."""
    d = 128
    X = vmf(field_direction('full', d).numpy(), kappa, 1500, 13)
    c = classify_phase(X)
    assert c['phase'] == expected
    if kappa > 100:
        assert c['chi_norm'] < 1  # confinement: fluctuations below those of the covariance-matched Gaussian


def test_count_modes_and_locate_edge():
    x = np.linspace(-1, 1, 201)
    one = stats.norm(0, 0.1).pdf(x)
    two = 0.9 * stats.norm(0, 0.09).pdf(x) + 0.1 * stats.norm(0.78, 0.03).pdf(x)
    assert count_modes(one) == 1 and count_modes(two) == 2
    assert locate_edge([1.0, 3.0, 9.0, 0.2], [0.0, 0.3, 0.5, 0.95]) == 2
    assert locate_edge([1.0, 8.0], [0.0, 0.04], [False, True]) == 1
    assert locate_edge([1.0, 0.1], [0.0, 0.95]) is None
    with pytest.raises(TypeError, match='PhaseThresholds'):
        classify_phase(np.eye(3), thresholds={'edge_mean': 0.2})
    assert PhaseThresholds().ordered_mean == 0.8



def test_locate_edge_normalised_chi_beats_low_rank():
    "Oracle by construction: low-rank centred Gaussians (chi_ovl = d/r, chi_norm = 1, rank <= 2 even multimodal) vs one multi-island set."
    d, n = 64, 1500
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731

    def low_rank(r, s):  # isotropic Gaussian on a random r-dim subspace
        Q, _ = torch.linalg.qr(torch.randn(d, r, generator=gen(s), dtype=torch.float64))
        return torch.randn(n, r, generator=gen(s + 1), dtype=torch.float64) @ Q.T

    def vmf(k, m, s):
        return torch.from_numpy(stats.vonmises_fisher(np.eye(d)[k], 2000.0).rvs(m, random_state=np.random.default_rng(s)))

    # a dominant island (50%), a minor island (10%) and a disordered sea (40%): two coexisting islands
    islands = torch.cat([vmf(0, 750, 40), vmf(1, 150, 41), sample_sphere(600, d, generator=gen(42), dtype=torch.float64)])
    family = [low_rank(1, 1), low_rank(2, 3), islands, low_rank(3, 5)]
    rep = [classify_phase(z) for z in family]
    chi = [r['chi_ovl'] for r in rep]
    for r, c in zip((1, 2, 3), (rep[0], rep[1], rep[3])):  # closed forms: chi_ovl = d/r, chi_gauss = d/PR = d/r
        assert abs(c['chi_ovl'] / (d / r) - 1) < 0.05 and abs(c['chi_norm'] - 1) < 0.05
    assert rep[0]['multimodal'] and rep[1]['multimodal']  # arcsine-like end peaks: eligible despite E[R] ~ 0
    assert rep[2]['phase'] == 'edge' and rep[2]['chi_norm'] > 1.2 and rep[2]['chi_ovl'] < d / 4
    args = (chi, [r['mean'] for r in rep], [r['multimodal'] for r in rep])
    assert locate_edge(*args) == 0  # the raw argmax picks the rank-1 Gaussian (chi_ovl = d)
    assert locate_edge(*args, chi_gauss=[r['chi_gauss'] for r in rep]) == 2  # normalised: the islands
    out = locate_edge(*args, chi_gauss=[r['chi_gauss'] for r in rep], details=True)
    assert out['index'] == 2 and out['normalised'] and out['edge_chi_ovl'] == chi[2]  # raw value kept
    np.testing.assert_allclose(out['chi_norm'], [r['chi_norm'] for r in rep])
    np.testing.assert_array_equal(out['chi_ovl'], chi)
    assert locate_edge(*args, details=True)['chi_norm'] is None


def test_locate_edge_chi_gauss_edge_cases():
    # NaN reference (identical rows): not rankable, so the other eligible model wins; all NaN -> None
    assert locate_edge([9.0, 1.0], [0.5, 0.5], chi_gauss=[float('nan'), 2.0]) == 1
    assert locate_edge([9.0], [0.5], chi_gauss=[float('nan')]) is None
    assert locate_edge([4.0, 3.0], [0.5, 0.5], chi_gauss=[8.0, 1.0]) == 1  # 0.5 vs 3.0
    with pytest.raises(ValueError, match='chi_gauss'):
        locate_edge([1.0, 2.0], [0.3, 0.3], chi_gauss=[1.0])
    d = locate_edge([1.0, 0.1], [0.0, 0.95], details=True)
    assert d['index'] is None and d['edge_chi_ovl'] is None

def test_geodesic_leapfrog_stays_on_sphere_and_is_reversible():
    "Geodesic leapfrog: on the sphere, tangent momentum, time-reversible (negate v, same steps -> start), H conserved as eps -> 0."
    from hyperlatent.hamiltonian import _energy_and_grad, _geodesic_leapfrog, _tangent
    d, n = 6, 5
    g = torch.Generator().manual_seed(0)
    U = lambda x: (x ** 4).sum(-1) / d - x[:, 0]  # noqa: E731
    s = sample_sphere(n, d, generator=g, dtype=torch.float64)
    e, gr = _energy_and_grad(U, s)
    v = _tangent(torch.randn(n, d, generator=g, dtype=torch.float64), s / math.sqrt(d))
    eps = torch.full((n, 1), 0.05, dtype=torch.float64)
    sp, ep, gp, vp = _geodesic_leapfrog(U, s, gr, v, eps, 7)
    torch.testing.assert_close(sp.norm(dim=-1), torch.full((n,), math.sqrt(d), dtype=torch.float64))
    torch.testing.assert_close((vp * sp).sum(-1), torch.zeros(n, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(ep, U(sp))
    sb, eb, _, vb = _geodesic_leapfrog(U, sp, gp, -vp, eps, 7)
    torch.testing.assert_close(sb, s, atol=1e-10, rtol=0)
    torch.testing.assert_close(-vb, v, atol=1e-10, rtol=0)
    h0, h1 = e + 0.5 * (v * v).sum(-1), ep + 0.5 * (vp * vp).sum(-1)
    _, ep2, _, vp2 = _geodesic_leapfrog(U, s, gr, v, eps / 10, 70)  # same path length, 10x smaller step
    h2 = ep2 + 0.5 * (vp2 * vp2).sum(-1)
    assert ((h2 - h0).abs() < (h1 - h0).abs() / 20 + 1e-12).all()  # second order: error / ~100

# ----------------------------------------------------------------------------- the Hamiltonian

def test_latent_hamiltonian_closed_form_and_gradcheck():
    "A linear decoder gives a quadratic form; image-shaped outputs sum over every pixel; gradients are exact."
    g = torch.Generator().manual_seed(0)
    d = 6
    W = torch.randn(2 * 3 * 3, d, generator=g, dtype=torch.float64)
    c = torch.randn(2 * 3 * 3, generator=g, dtype=torch.float64)
    x = torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
    dec = lambda s: (s @ W.T + c).reshape(-1, 2, 3, 3)  # noqa: E731
    n = torch.randn(d, generator=g, dtype=torch.float64)
    H = LatentHamiltonian(dec, x, field=n, field_strength=0.7, noise_scale=0.3)
    s = sample_sphere(5, d, generator=g, dtype=torch.float64).requires_grad_()
    expect = ((x.reshape(-1) - c - s @ W.T) ** 2).sum(-1) / (2 * 0.09) - 0.7 * math.sqrt(d) * (s @ (n / n.norm()))
    torch.testing.assert_close(H(s), expect, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: H(t), (s,))
    assert H(s.detach().reshape(5, 1, d)).shape == (5, 1)
    with pytest.raises(ValueError, match='noise_scale'):
        LatentHamiltonian(dec, x, noise_scale=0.0)
    with pytest.raises(ValueError, match='field'):
        LatentHamiltonian(dec, x, field='north')


def test_angular_field_term():
    "field='angular': -h sum_{k=1}^{d-2} sqrt(d/k) x_k / sqrt(sum_{j>=k} x_j^2 + 1e-3), written out directly."
    d = 7
    s = sample_sphere(4, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = LatentHamiltonian(lambda t: torch.zeros(t.shape[0], 1, dtype=t.dtype), torch.zeros(1, dtype=torch.float64),
                          field='angular', field_strength=0.4)
    sn = s.numpy()
    expect = []
    for row in sn:
        e = 0.0
        for k in range(1, d - 1):
            e += math.sqrt(d / k) * row[k - 1] / math.sqrt((row[k - 1:] ** 2).sum() + 1e-3)
        expect.append(-0.4 * e)
    np.testing.assert_allclose(H(s).numpy(), expect, rtol=1e-12)


# ----------------------------------------------------------------------------- the sampler

def cw_energy(N, h=0.0, J=1.0):
    return lambda s: -J / (2 * N) * s.sum(-1) ** 2 - h * s.sum(-1)


def cw_exact(N, T, f, h=0.0, J=1.0):
    "<f(m)> under the exact finite-N law p(m) ~ (1 - m^2)^((N-3)/2) exp(N/T (J m^2/2 + h m)) (spec §11 O5)."
    logw = lambda m: (N - 3) / 2 * np.log1p(-m * m) + N / T * (J * m * m / 2 + h * m)  # noqa: E731
    grid = np.linspace(-0.9999, 0.9999, 20001)
    top = logw(grid).max()
    w = lambda m: np.exp(logw(m) - top)  # noqa: E731
    pts = list(grid[np.argsort(logw(grid))[-3:]])
    Z = integrate.quad(w, -1, 1, limit=400, points=pts)[0]
    return integrate.quad(lambda m: f(m) * w(m), -1, 1, limit=400, points=pts)[0] / Z


def chain_estimate(res, f):
    "Mean of f over kept samples, and its standard error from the spread of the independent chains."
    per_chain = f(res.samples).mean(0)
    return float(per_chain.mean()), float(per_chain.std()) / math.sqrt(per_chain.numel())


@pytest.mark.parametrize('N,T,h', [(32, 2.0, 0.0), (32, 1.5, 0.0), (32, 0.5, 0.0), (32, 1.5, 0.2), (200, 0.6, 0.0)])
def test_sampler_spherical_curie_weiss_exact(N, T, h):
    "Geodesic HMC reproduces the exact finite-N spherical Curie-Weiss law: chi above T_c, <|m|> and <m> below/with field."
    res = sample_gibbs_sphere(cw_energy(N, h), N, temperature=T, n_chains=64, n_steps=400,
                              generator=torch.Generator().manual_seed(int(100 * T + 10 * h + N)), dtype=torch.float64)
    assert res.samples.shape == (200, 64, N) and 0.4 < res.acceptance_rate < 0.99
    assert torch.allclose(res.samples.norm(dim=-1), torch.tensor(math.sqrt(N), dtype=torch.float64))
    m = lambda s: s.mean(-1)  # noqa: E731
    if h == 0 and T > 1:
        est, se = chain_estimate(res, lambda s: N * m(s) ** 2 / T)
        exact = N * cw_exact(N, T, lambda x: x * x) / T
    elif h == 0:
        est, se = chain_estimate(res, lambda s: m(s).abs())
        exact = cw_exact(N, T, abs)
    else:
        est, se = chain_estimate(res, m)
        exact = cw_exact(N, T, lambda x: x, h=h)
    assert abs(est - exact) < 4 * se + 1e-3, (est, exact, se)
    if N == 200 and T < 1:  # mean field m = sqrt(1 - T/J) below T_c, reached up to O(1/N)
        assert abs(est - math.sqrt(1 - T)) < 0.02


def test_sampler_check_has_power():
    "The same check rejects the neighbouring temperature: 4 standard errors resolve T = 2.0 from T = 1.7."
    N = 32
    res = sample_gibbs_sphere(cw_energy(N), N, temperature=2.0, n_chains=256, n_steps=600,
                              generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    est, se = chain_estimate(res, lambda s: N * s.mean(-1) ** 2)
    wrong = N * cw_exact(N, 1.7, lambda x: x * x)
    right = N * cw_exact(N, 2.0, lambda x: x * x)
    assert abs(est - right) < 4 * se + 1e-3 and abs(est - wrong) > 4 * se


@pytest.mark.parametrize('kappa', [10.0, 60.0])
def test_sampler_vmf_paramagnet(kappa):
    "The field term alone at temperature T is a vMF law with kappa = h d / T: <n.u> = A_d(kappa)."
    d, T = 24, 0.5
    h = kappa * T / d
    H = LatentHamiltonian(lambda t: torch.zeros(t.shape[0], 1, dtype=t.dtype), torch.zeros(1, dtype=torch.float64),
                          field='half', field_strength=h)
    res = sample_gibbs_sphere(H, d, temperature=T, n_chains=64, n_steps=300, generator=torch.Generator().manual_seed(6),
                              dtype=torch.float64)
    nh = field_direction('half', d)
    est, se = chain_estimate(res, lambda s: s @ nh / math.sqrt(d))
    assert abs(est - A_d(d, kappa)) < 4 * se + 1e-3


def test_sampler_reproducible_and_validates():
    kw = dict(temperature=1.0, n_chains=4, n_steps=20, generator=None, dtype=torch.float64)
    a = sample_gibbs_sphere(cw_energy(8), 8, **{**kw, 'generator': torch.Generator().manual_seed(0)})
    b = sample_gibbs_sphere(cw_energy(8), 8, **{**kw, 'generator': torch.Generator().manual_seed(0)})
    assert torch.equal(a.samples, b.samples)
    with pytest.raises(ValueError, match='temperature'):
        sample_gibbs_sphere(cw_energy(8), 8, **{**kw, 'temperature': 0.0})
    with pytest.raises(ValueError, match='n_burn'):
        sample_gibbs_sphere(cw_energy(8), 8, **kw, n_burn=20)


# ----------------------------------------------------------------------------- landscape

def test_local_minima_p2_is_top_eigenvector():
    "p = 2 without field: the only local minima are +-v_max of the symmetrised couplings, H = -sqrt(d) lambda_max."
    d = 20
    ps = PSpinHamiltonian(d, 2, generator=torch.Generator().manual_seed(3))
    Js = ((ps.J + ps.J.T) / 2).numpy()
    lam, V = np.linalg.eigh(Js)
    res = local_minima(ps, d, n_starts=16, n_steps=3000, generator=torch.Generator().manual_seed(4))
    assert res['n_converged'] >= 14 and res['n_minima'] == 2
    np.testing.assert_allclose(res['energies'].numpy(), -math.sqrt(d) * lam[-1], rtol=1e-6)
    np.testing.assert_allclose(np.abs(res['minima'].numpy() @ V[:, -1]), math.sqrt(d), rtol=1e-4)


def test_pspin_trivialisation():
    "Pure p = 3 spherical glass: many distinct minima at zero field, a single one at a strong field (h >> sqrt 3)."
    d = 24
    ps = PSpinHamiltonian(d, 3, generator=torch.Generator().manual_seed(2))
    s = sample_sphere(3, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(ps(s).numpy(), -np.einsum('ijk,bi,bj,bk->b', ps.J.numpy(), *[s.numpy()] * 3) / d,
                               rtol=1e-10)
    rg = ruggedness(ps, [0.0, 6.0], d, n_starts=24, n_steps=800, generator=torch.Generator().manual_seed(15))
    assert rg['n_minima'][0] >= 5 and rg['n_minima'][1] == 1
    assert rg['min_energy'][1] < rg['min_energy'][0]


def test_latent_hamiltonian_of_a_vae_decoder_and_its_ruggedness():
    "Works with the package's VAE decoder; a strong field leaves a single minimum (near the field axis)."
    vae = pytest.importorskip('hyperlatent.vae')
    torch.manual_seed(0)
    model = vae.mlp_vae((1, 8, 8), 6, hidden=(32,)).double()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = LatentHamiltonian(model.decode, x, field='full', noise_scale=0.1)
    s = sample_sphere(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        expect = ((model.decode(s) - x) ** 2).sum(dim=(1, 2, 3)) / (2 * 0.01)
    torch.testing.assert_close(H(s), expect)
    rg = ruggedness(H, [0.0, 200.0], 6, n_starts=12, n_steps=1500, generator=torch.Generator().manual_seed(3))
    assert rg['n_minima'][0] >= 1 and rg['n_minima'][1] == 1 and rg['n_converged'][1] >= 10
    res = local_minima(H.at_field(200.0), 6, n_starts=4, n_steps=1500, generator=torch.Generator().manual_seed(4))
    assert float(res['minima'][0, 0]) / math.sqrt(6) > 0.99  # aligned with e_1


# ----------------------------------------------------------------------------- chi_norm and the Gaussian reference

def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_gaussian_reference_closed_form_matches_sampling():
    "chi_gauss = d tr(S^2)/tr(S)^2 (closed form) against chi_ovl of a large sample of N(0, S) (second route)."
    d = 64
    lam = torch.linspace(0.2, 3.0, d, dtype=torch.float64) ** 3  # strongly anisotropic spectrum
    z = torch.randn(4000, d, generator=_g(1), dtype=torch.float64) * lam.sqrt()
    ref = gaussian_reference(z, n_reference=4000, seed=3)
    S = ref['cov']
    test_pr = float(torch.trace(S)) ** 2 / float((S * S).sum())
    assert abs(ref['participation_ratio'] - test_pr) < 1e-9 and abs(ref['chi_gauss'] - d / test_pr) < 1e-9
    sampled = overlap_stats(ref['sample'])['chi_ovl']
    assert abs(sampled / ref['chi_gauss'] - 1) < 0.08
    a, b = gaussian_reference(z, seed=5), gaussian_reference(z, seed=5)
    assert torch.equal(a['sample'], b['sample'])
    with pytest.raises(ValueError, match='n_reference'):
        gaussian_reference(z, n_reference=1)
    with pytest.raises(TypeError, match='seed'):
        gaussian_reference(z, seed=True)


def test_low_rank_gaussian_is_disordered():
    "Rank-10 centred isotropic Gaussian in d = 128: chi_ovl = d/10 = 12.8 (old rule: 'edge'), chi_norm = 1."
    d, r = 128, 10
    Q, _ = torch.linalg.qr(torch.randn(d, r, generator=_g(1), dtype=torch.float64))
    z = torch.randn(3000, r, generator=_g(2), dtype=torch.float64) @ Q.T
    c = classify_phase(z)
    assert c['phase'] == 'disordered', c['reason']
    assert abs(c['chi_ovl'] - d / r) < 0.1 * d / r  # exact: Var R = 1/r on S^{r-1}
    assert abs(c['chi_norm'] - 1) < 0.05 and abs(c['participation_ratio'] - r) < 0.5
    assert abs(c['flow_exponent'] - 0.5) < 0.15 and 'chi_ovl' in c and 'flow_exponent' in c
    # a coordinate-aligned collapse (only 10 active units) and a rank-2 Gaussian (arcsine P(R), two end modes)
    za = torch.zeros(3000, d, dtype=torch.float64)
    za[:, :r] = torch.randn(3000, r, generator=_g(3), dtype=torch.float64)
    assert classify_phase(za)['phase'] == 'disordered'
    z2 = torch.randn(3000, 2, generator=_g(4), dtype=torch.float64) @ Q[:, :2].T
    c2 = classify_phase(z2)
    assert c2['phase'] == 'disordered' and c2['n_modes'] == c2['n_modes_reference'] == 2


def test_full_rank_gaussian_is_disordered():
    z = torch.randn(3000, 128, generator=_g(5), dtype=torch.float64)
    c = classify_phase(z)
    assert c['phase'] == 'disordered' and abs(c['chi_ovl'] - 1) < 0.1 and abs(c['chi_norm'] - 1) < 0.1
    assert abs(c['flow_exponent'] - 0.5) < 0.05


def test_one_island_is_ordered():
    "All points near one random direction plus small isotropic noise (E[R] ~ 0.76 at d = 128): ordered."
    d = 128
    m = torch.randn(d, generator=_g(6), dtype=torch.float64)
    z = m / m.norm() + 0.05 * torch.randn(3000, d, generator=_g(7), dtype=torch.float64)
    c = classify_phase(z)
    A2 = 1 / (1 + 0.05 ** 2 * d)  # |m|^2 / (|m|^2 + |noise|^2)
    assert abs(c['mean'] - A2) < 0.02
    assert c['phase'] == 'ordered', c['reason']
    assert c['chi_norm'] < 0.5 and c['chi_ovl'] < 1  # confined: below the covariance-matched Gaussian


@pytest.mark.parametrize('K', [5, 8, 10])
def test_several_islands_are_edge(K):
    "K well-separated islands on the sphere with moderate spread: P(R) has an intra-island mode; edge."
    d = 128
    C = torch.nn.functional.normalize(torch.randn(K, d, generator=_g(8 + K), dtype=torch.float64), dim=1)
    z = (C[:, None] + 0.04 * torch.randn(K, 3000 // K, d, generator=_g(20 + K), dtype=torch.float64)).reshape(-1, d)
    c = classify_phase(z)
    assert c['phase'] == 'edge', c['reason']
    assert c['n_modes'] >= 2 and c['n_modes_reference'] == 1


def test_merge_minima_contract():
    "Lowest energy first; overlap > 1 - merge_tol merges into the first representative; unconverged rows are ignored."
    from hyperlatent.hamiltonian import _merge_minima
    a = math.sqrt(1 - 1e-6)
    u = torch.tensor([[1.0, 0.0], [a, 1e-3], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    e = torch.tensor([2.0, 1.0, 3.0, 0.5, -1.0], dtype=torch.float64)
    conv = torch.tensor([True, True, True, True, False])
    assert _merge_minima(u, e, conv, 1e-4) == ([3, 1, 2], [1, 2, 1])  # rows 0 and 1 merge under row 1 (lower energy)
    assert _merge_minima(u, e, conv, 1e-8) == ([3, 1, 0, 2], [1, 1, 1, 1])
    assert _merge_minima(u, e, torch.zeros(5, dtype=torch.bool), 1e-4) == ([], [])
