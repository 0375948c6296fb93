"""Property and oracle tests for hyperlatent.coords (independent of the implementation's own outputs)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from hyperlatent.coords import (log_abs_det_jacobian, sample_sphere, sphere_project, spherical_cosines,
                                to_cartesian, to_spherical)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DIMS = [2, 3, 4, 7, 16, 128, 512, 1000, 4096]


def rel_err(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(torch.finfo(b.dtype).tiny)).max().item()


def adversarial(d, dtype, g):
    """Rows that stress the transform: zero runs, negative last coordinate, one-hots, tiny tails."""
    rows = []
    x = torch.randn(d, dtype=dtype, generator=g); x[d // 3:] = 0; rows.append(x)          # long trailing zeros
    x = torch.randn(d, dtype=dtype, generator=g); x[: d // 2] = 0; rows.append(x)         # long leading zeros
    x = torch.randn(d, dtype=dtype, generator=g); x[-1] = -abs(x[-1]) - 1; rows.append(x)  # negative last coordinate
    x = torch.zeros(d, dtype=dtype); x[-1] = -3.0; rows.append(x)                          # one-hot at the end, negative
    x = torch.zeros(d, dtype=dtype); x[0] = 2.0; rows.append(x)                            # one-hot at the start
    x = torch.zeros(d, dtype=dtype); x[d // 2] = -1.0; rows.append(x)                      # one-hot in the middle
    x = torch.randn(d, dtype=dtype, generator=g); x[1::2] = 0; rows.append(x)              # alternating zeros
    x = torch.randn(d, dtype=dtype, generator=g); x[-2:] = torch.tensor([-0.0, -1e-3], dtype=dtype); rows.append(x)
    return torch.stack(rows)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('d', DIMS)
def test_round_trip_gaussian_and_adversarial(d, dtype):
    g = torch.Generator().manual_seed(d)
    x = torch.cat([torch.randn(64, d, dtype=dtype, generator=g), adversarial(d, dtype, g)])
    big, small = (1e30, 1e-30) if dtype == torch.float64 else (1e15, 1e-15)
    for scale in [1.0, big, small]:
        xs = x * scale
        r, phi = to_spherical(xs)
        assert r.dtype == dtype and phi.dtype == dtype and phi.shape == (x.shape[0], d - 1)
        assert torch.isfinite(r).all() and torch.isfinite(phi).all()
        back = to_cartesian(r, phi)
        assert rel_err(back, xs) <= TOL[dtype], (d, dtype, scale, rel_err(back, xs))
        # radius is the Euclidean norm (computed independently in float64 on the unscaled rows)
        ref = x.double().norm(dim=-1) * scale
        assert torch.allclose(r.double(), ref, rtol=10 * TOL[dtype], atol=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_angle_ranges(dtype):
    x = torch.randn(500, 9, dtype=dtype, generator=torch.Generator().manual_seed(0))
    _, phi = to_spherical(x)
    assert (phi[:, :-1] >= 0).all() and (phi[:, :-1] <= math.pi).all()
    assert (phi[:, -1] >= 0).all() and (phi[:, -1] < 2 * math.pi).all()
    # sign of the last coordinate is carried by the signed last angle
    assert torch.equal(torch.sin(phi[:, -1]) < 0, x[:, -1] < 0)


def test_small_vectors_by_hand():
    # 2-D: the single angle is the polar angle in [0, 2 pi)
    r, phi = to_spherical(torch.tensor([[0., 1.], [-1., 0.], [0., -1.], [1., -1.]], dtype=torch.float64))
    exp = torch.tensor([[math.pi / 2], [math.pi], [3 * math.pi / 2], [7 * math.pi / 4]], dtype=torch.float64)
    assert torch.allclose(phi, exp, atol=1e-15)
    # 3-D examples of specs/hcvae.md §13.2 with eps = 0
    r, phi = to_spherical(torch.tensor([[0., 0., 1.], [0., -1., 0.], [0., 0., -1.], [0., 0.999, -0.001]], dtype=torch.float64))
    assert torch.allclose(phi[:, 0], torch.full((4,), math.pi / 2, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(phi[:, 1], torch.tensor([math.pi / 2, math.pi, 3 * math.pi / 2, 2 * math.pi - math.atan(0.001 / 0.999)],
                                                  dtype=torch.float64), atol=1e-12)
    assert abs(phi[3, 1].item() - 6.2822) < 1e-4  # the spec's value for eps = 0


def test_cosines_with_eps_match_authors_examples():
    # specs/hcvae.md §13.2: cos_sph([1,1,1], eps=1e-3) = [0.57725, 0.70693]; §2: ones vector at d = 128
    c = spherical_cosines(torch.ones(3, dtype=torch.float64), eps=1e-3)
    assert torch.allclose(c, torch.tensor([0.57725, 0.70693], dtype=torch.float64), atol=5e-6)
    c = spherical_cosines(torch.ones(128, dtype=torch.float64), eps=1e-3)
    for idx, v in [(0, 0.0883880), (1, 0.0887353), (-3, 0.4999375), (-2, 0.5772541), (-1, 0.7069301)]:
        assert abs(c[idx].item() - v) < 1e-7
    # 3-D angle with eps = 1e-3 quoted by the spec: (0, -1, 0) -> last angle 3.1100 (arccos form, range [0, pi])
    c = spherical_cosines(torch.tensor([0., -1., 0.], dtype=torch.float64), eps=1e-3)
    assert abs(math.acos(c[1].item()) - 3.1100) < 1e-4


def test_uniform_sphere_cosine_moments():
    d, n = 32, 40000
    x = sample_sphere(n, d, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    c = spherical_cosines(x)
    k = torch.arange(1, d, dtype=torch.float64)
    var = 1 / (d - k + 1)  # Var cos phi_k for a uniform point, 1-based k
    assert (c.mean(0).abs() < 5 * var.sqrt() / math.sqrt(n)).all()
    # sample variance of a bounded variable: standard error < sqrt(E c^4 / n); use a 5-sigma band
    assert ((c.var(0) - var).abs() < 5 * var * math.sqrt(2 / n) * 1.5).all()


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 40)),
    log_scale=st.floats(-25, 25),
    seed=st.integers(0, 2**31 - 1),
    zero_frac=st.floats(0, 0.9),
)
def test_property_round_trip_and_identities(shape, log_scale, seed, zero_frac):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    x = x * (torch.rand(*shape, dtype=torch.float64, generator=g) >= zero_frac) * 10.0 ** log_scale
    r, phi = to_spherical(x)
    assert r.shape == shape[:-1] and phi.shape == shape[:-1] + (shape[-1] - 1,)
    assert torch.isfinite(phi).all()
    back = to_cartesian(r, phi)
    assert ((back - x).norm(dim=-1) <= 1e-12 * x.norm(dim=-1) + 0).all()
    c = spherical_cosines(x)
    assert (c.abs() <= 1).all()
    # identity x_k = cos(phi_k) * sqrt(S_k), with S computed independently in numpy (scaled to avoid underflow)
    xn = x.numpy() / 10.0 ** log_scale
    S = np.flip(np.cumsum(np.flip(xn**2, -1), -1), -1)[..., :-1]
    assert np.allclose(np.cos(phi.numpy()) * np.sqrt(S), xn[..., :-1], atol=1e-12 * np.sqrt(S[..., :1]).max() + 1e-300)


def scaled(e):
    "Floats +-10^u with u uniform in [-e, e], or exactly 0."
    return st.one_of(st.just(0.0), st.builds(lambda sign, u: sign * 10.0 ** u, st.sampled_from([-1.0, 1.0]), st.floats(-e, e)))


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(2, 12)), elements=scaled(15)))
def test_property_no_nan_values_or_gradients(a):
    # Components span the stated float32 range 1e-15 .. 1e15 (mixed within a vector) plus exact zeros.
    x = torch.tensor(a, requires_grad=True)
    r, phi = to_spherical(x)
    c0, c1 = spherical_cosines(x), spherical_cosines(x, eps=1e-3)
    p = sphere_project(x)
    for t in (r, phi, c0, c1, p):
        assert torch.isfinite(t).all()
    (r.sum() + phi.sum() + c0.sum() + c1.sum() + p.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_gradients_at_degenerate_points_are_finite():
    for x0 in [torch.zeros(2, 5), torch.tensor([[1., 0., 0., 0.]]), torch.tensor([[0., 0., 0., -1.]]),
               torch.tensor([[0., 2., 0., 0., 0.]])]:
        x = x0.clone().requires_grad_()
        r, phi = to_spherical(x)
        (r.sum() + phi.sum() + spherical_cosines(x).sum() + spherical_cosines(x, 1e-3).sum()).backward()
        assert torch.isfinite(x.grad).all()
        rr, pp = to_spherical(x0)
        rr.requires_grad_(); pp = pp.clone().requires_grad_()
        to_cartesian(rr, pp).sum().backward()
        assert torch.isfinite(rr.grad).all() and torch.isfinite(pp.grad).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: to_spherical(t), (x,))
    assert torch.autograd.gradcheck(lambda t: spherical_cosines(t, eps=1e-3), (x,))
    assert torch.autograd.gradcheck(lambda t: sphere_project(t, radius=2.5), (x,))
    # gradient of r is the unit vector x / |x| (closed form)
    x2 = x.detach().clone().requires_grad_()
    to_spherical(x2)[0].sum().backward()
    assert torch.allclose(x2.grad, x / x.norm(dim=-1, keepdim=True))


def test_jacobian_against_autograd_various_d():
    g = torch.Generator().manual_seed(4)
    for d in [2, 3, 6]:
        r0 = torch.rand((), dtype=torch.float64, generator=g) + 0.3
        phi0 = torch.rand(d - 1, dtype=torch.float64, generator=g) * 2.8 + 0.1
        J = torch.autograd.functional.jacobian(lambda v: to_cartesian(v[0], v[1:]), torch.cat([r0[None], phi0]))
        assert torch.allclose(torch.linalg.slogdet(J).logabsdet, log_abs_det_jacobian(r0, phi0), atol=1e-12)
    # batched shapes
    assert log_abs_det_jacobian(torch.ones(3, 2), torch.ones(3, 2, 4)).shape == (3, 2)


def test_dtype_and_device_follow_input():
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 5, dtype=dtype)
        assert spherical_cosines(x).dtype == dtype and sphere_project(x).dtype == dtype
        assert to_cartesian(*to_spherical(x)).dtype == dtype
    assert sample_sphere(4, 3, dtype=torch.float64).dtype == torch.float64


def test_sample_sphere_reproducible_and_radius():
    a = sample_sphere(5, 8, generator=torch.Generator().manual_seed(1))
    b = sample_sphere(5, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.full((5,), math.sqrt(8)))
    assert torch.allclose(sample_sphere(5, 8, radius=3.0).norm(dim=-1), torch.full((5,), 3.0))


@pytest.mark.parametrize('call, arg', [
    (lambda: to_spherical(torch.ones(3, 1)), 'x'),
    (lambda: to_spherical(torch.ones(3, 4, dtype=torch.int64)), 'x'),
    (lambda: spherical_cosines(torch.ones(4), eps=-1.0), 'eps'),
    (lambda: spherical_cosines(torch.ones(4), eps=float('nan')), 'eps'),
    (lambda: to_cartesian(torch.ones(3), torch.ones(4, 2)), 'r'),
    (lambda: to_cartesian(torch.ones(3, dtype=torch.float64), torch.ones(3, 2)), 'dtype'),
    (lambda: to_cartesian(torch.ones(3), torch.ones(3, 0)), 'phi'),
    (lambda: sphere_project(torch.ones(2, 3), radius=-1.0), 'radius'),
    (lambda: sphere_project(torch.ones(2, 3), radius=torch.tensor([0.0, 1.0])), 'radius'),
    (lambda: sample_sphere(3, 1), 'd'),
    (lambda: sample_sphere(-1, 3), 'n'),
])
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        call()


def test_no_quadratic_memory():
    """The forward+backward of the cosines never allocates a (batch, d, d) tensor: peak extra memory is linear in d."""
    import tracemalloc  # torch CPU allocations are not traced; use the profiler's memory accounting instead
    from torch.profiler import ProfilerActivity, profile
    peaks = {}
    for d in (256, 1024):
        x = torch.randn(64, d, requires_grad=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            c = spherical_cosines(x, eps=1e-3)
            (c.mean(0).pow(2).sum() + c.var(0).sum()).backward()
        peaks[d] = max(e.cpu_memory_usage for e in prof.key_averages())
    # a single (64, d, d) float32 tensor would be 64*d*d*4 bytes (256 MiB at d = 1024)
    assert peaks[1024] < 64 * 1024 * 1024 * 4 / 16
    assert peaks[1024] / max(peaks[256], 1) < 8  # linear growth is 4x; quadratic would be 16x


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 10)), elements=scaled(30)))
def test_property_no_nan_float64_mixed_scales(a):
    # the stated float64 range 1e-30 .. 1e30, mixed within a vector, plus exact zeros
    x = torch.tensor(a, requires_grad=True)
    r, phi = to_spherical(x)
    back = to_cartesian(r, phi)
    assert ((back - x).norm(dim=-1) <= 1e-12 * x.norm(dim=-1)).all()
    (r.sum() + phi.sum() + spherical_cosines(x).sum() + spherical_cosines(x, eps=1e-3).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_mixed_scale_float32_tail_angles_are_exact():
    # the tail (1e-14, 1e-14) next to 2e5: its own angle is pi/4 and the gradient is representable
    x = torch.tensor([[2.3e5, 8.8e-15, 8.8e-15]], requires_grad=True)
    r, phi = to_spherical(x)
    assert abs(phi[0, 1].item() - math.pi / 4) < 1e-6
    phi[0, 1].backward()
    # d phi_2 / d x_3 = x_2 / (x_2^2 + x_3^2) = 1 / (2 * 8.8e-15)
    assert torch.isfinite(x.grad).all()
    assert abs(x.grad[0, 2].item() * 2 * 8.8e-15 - 1) < 1e-5


# --- non-finite input: NaN in -> NaN out, never a valid-looking value ---------------------------------------------
# Before this rule a NaN row gave r = 0, cosines 1 and sphere_project -> radius * e_1 (inf rows likewise).

_NAN, _INF = float('nan'), float('inf')


def test_issue_nan_row_reproductions():
    x = torch.tensor([[1., _NAN, 2.]])
    r, phi = to_spherical(x)
    assert r.isnan().all() and phi.isnan().all()  # was r = 0
    assert spherical_cosines(x).isnan().all()  # was [1, 1]
    assert spherical_cosines(x, eps=1e-3).isnan().all()
    assert sphere_project(x).isnan().all()  # was sqrt(3) * e_1
    assert sphere_project(x, radius=2.0).isnan().all()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('bad', [[_INF, 0., 1.], [0., -_INF, 0.], [_INF, -_INF, 1.], [_NAN, _INF, 0.], [0., 0., _NAN]])
def test_non_finite_rows_give_nan_everywhere_in_the_row(dtype, bad):
    x = torch.tensor([bad], dtype=dtype)
    r, phi = to_spherical(x)
    outs = [r, phi, spherical_cosines(x), spherical_cosines(x, eps=1e-3), sphere_project(x), sphere_project(x, radius=3.0),
            to_cartesian(r, phi)]
    for out in outs:
        assert out.isnan().all(), out


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_finite_rows_in_a_batch_with_non_finite_rows_are_exact(dtype):
    g = torch.Generator().manual_seed(11)
    good = torch.randn(3, 6, dtype=dtype, generator=g)
    x = torch.cat([good[:1], torch.tensor([[1., _NAN, 2., 0., 0., 1.]], dtype=dtype), good[1:2],
                   torch.tensor([[_INF, 0., 0., 0., 0., 0.]], dtype=dtype), good[2:]]).reshape(5, 6)
    fin = [0, 2, 4]
    r, phi = to_spherical(x)
    r0, phi0 = to_spherical(good)
    assert torch.equal(r[fin], r0) and torch.equal(phi[fin], phi0)  # bit-identical to the clean batch
    for f in (spherical_cosines, lambda t: spherical_cosines(t, eps=1e-3), sphere_project):
        out, ref = f(x), f(good)
        assert torch.equal(out[fin], ref)
        assert out[[1, 3]].isnan().all()
    # independent oracle for the finite rows: closed forms in float64
    g64 = good.double()
    assert torch.allclose(r[fin].double(), g64.norm(dim=-1), rtol=1e-6)
    p = sphere_project(x, radius=2.0)[fin].double()
    assert torch.allclose(p, 2.0 * g64 / g64.norm(dim=-1, keepdim=True), rtol=1e-6, atol=1e-7)
    # leading batch dims: the NaN stays in its own row
    x3 = x.reshape(1, 5, 6)
    assert torch.equal(spherical_cosines(x3)[0, fin], spherical_cosines(good))


def test_nan_rows_do_not_leak_into_gradients_of_finite_rows():
    g = torch.Generator().manual_seed(12)
    good = torch.randn(2, 5, dtype=torch.float64, generator=g)
    x = torch.cat([good[:1], torch.tensor([[_NAN, 1., 0., 0., 2.]], dtype=torch.float64), good[1:]]).requires_grad_()
    xg = good.clone().requires_grad_()

    def loss(t):
        r, phi = to_spherical(t)
        return (r + phi.sum(-1) + spherical_cosines(t).sum(-1) + spherical_cosines(t, eps=1e-3).sum(-1)
                + sphere_project(t).sum(-1))

    loss(x)[[0, 2]].sum().backward()
    loss(xg).sum().backward()
    assert torch.isfinite(x.grad[[0, 2]]).all()
    assert torch.allclose(x.grad[[0, 2]], xg.grad, rtol=1e-12, atol=1e-14)


def test_zero_rows_keep_their_convention_next_to_nan_rows():
    x = torch.tensor([[0., 0., 0.], [_NAN, 0., 0.]])
    r, phi = to_spherical(x)
    assert r[0] == 0 and (phi[0] == 0).all()
    assert (spherical_cosines(x)[0] == 1).all() and (spherical_cosines(x, eps=1e-3)[0] == 0).all()
    assert torch.equal(sphere_project(x, radius=2.0)[0], torch.tensor([2., 0., 0.]))
    assert r[1].isnan() and phi[1].isnan().all() and sphere_project(x)[1].isnan().all()


@pytest.mark.parametrize('call, exc, arg', [
    (lambda: sample_sphere(True, 3), TypeError, 'n'),
    (lambda: sample_sphere(3, 2.0), TypeError, 'd'),
    (lambda: sample_sphere(3, True), TypeError, 'd'),
    (lambda: spherical_cosines(torch.ones(4), eps=True), TypeError, 'eps'),
    (lambda: spherical_cosines(torch.ones(4), eps=float('inf')), ValueError, 'eps'),
    (lambda: sphere_project(torch.ones(2, 3), radius=True), TypeError, 'radius'),
    (lambda: sphere_project(torch.ones(2, 3), radius=float('inf')), ValueError, 'radius'),
    (lambda: sphere_project(torch.ones(2, 3), radius='2'), TypeError, 'radius'),
])
def test_scalar_arguments_use_shared_checks(call, exc, arg):
    with pytest.raises(exc, match=arg):
        call()


def test_numpy_scalars_accepted_by_shared_checks():
    x = sample_sphere(np.int64(4), np.int64(3), radius=np.float64(2.0), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3) and torch.allclose(x.norm(dim=-1), torch.full((4,), 2.0))
