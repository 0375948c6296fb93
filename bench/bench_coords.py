"""Benchmark: O(d) spherical cosines vs the naive masked O(d^2) formulation (authors' first release).

Workload (issue 2): batch 200, forward + backward of the cosines (eps = 1e-3) plus their batch mean and
variance, the core of the compression objective. Each (implementation, d) runs in a fresh subprocess so
that its peak resident memory can be attributed to it. Reports the median of repeats and the speed ratio.

    python bench/bench_coords.py [--dims 128 512 800 2048] [--repeats 7] [--masked-max-d 800]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

BATCH = 200


def masked_cosines(x: torch.Tensor, eps: float) -> torch.Tensor:
    "The naive formulation: suffix energies through an (M, d, d) upper-triangular mask."
    d = x.shape[-1]
    mask = torch.triu(torch.ones(d, d, dtype=x.dtype, device=x.device))
    S = (x.unsqueeze(1).expand(-1, d, d) ** 2 * mask).sum(-1)
    return (x / torch.sqrt(S + eps))[..., :-1]


def objective(c: torch.Tensor) -> torch.Tensor:
    return c.mean(0).pow(2).sum() + c.var(0).sum()


def one(impl: str, d: int, repeats: int) -> dict:
    from hyperlatent.coords import spherical_cosines
    f = spherical_cosines if impl == 'ours' else masked_cosines
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, d, generator=g, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):  # first run is a warm-up
        t = time.perf_counter()
        objective(f(x, 1e-3)).backward()
        x.grad = None
        if i:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {'impl': impl, 'd': d, 'median_s': statistics.median(times), 'peak_extra_mib': (peak - base) / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--dims', type=int, nargs='+', default=[128, 512, 800, 2048])
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--masked-max-d', type=int, default=800,
                    help='largest d for the masked baseline (it allocates several (200, d, d) float32 tensors)')
    ap.add_argument('--one', nargs=3, metavar=('IMPL', 'D', 'REPEATS'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), int(a.one[2]))))
        return
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, fwd+bwd of cosines + batch mean/var')
    print(f"{'d':>6} {'ours ms':>10} {'ours MiB':>9} {'masked ms':>11} {'masked MiB':>11} {'ratio':>8}")
    for d in a.dims:
        res = {}
        for impl in ('ours', 'masked'):
            if impl == 'masked' and d > a.masked_max_d:
                continue
            reps = a.repeats if impl == 'ours' or d <= 512 else max(3, a.repeats // 2)
            out = subprocess.run([sys.executable, __file__, '--one', impl, str(d), str(reps)],
                                 capture_output=True, text=True, check=True)
            res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        o, m = res['ours'], res.get('masked')
        if m:
            print(f"{d:>6} {o['median_s']*1e3:>10.2f} {o['peak_extra_mib']:>9.1f} {m['median_s']*1e3:>11.1f} "
                  f"{m['peak_extra_mib']:>11.1f} {m['median_s']/o['median_s']:>7.0f}x")
        else:
            gib = BATCH * d * d * 4 / 2**30
            print(f"{d:>6} {o['median_s']*1e3:>10.2f} {o['peak_extra_mib']:>9.1f} {'skipped':>11} "
                  f"{f'>{gib:.1f}GiB':>11} {'-':>8}")


if __name__ == '__main__':
    main()
