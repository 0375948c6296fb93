"""Benchmark: exact overlap statistics over all pairs at n = 20,000 latents, d = 256 (issue 5 target: < 10 s, < 1 GiB).

Compares, each in a fresh subprocess (so that the peak resident memory can be attributed to it):
  stats   - overlap_stats: exact moments over all 2e8 pairs via the d x d Gram product U^T U (O(n d^2))
  hist    - overlap_distribution: exact 201-bin P(R) over all pairs via 2048 x 2048 tiles of U U^T (O(n^2 d))
  pairs   - overlap_stats with max_pairs=100,000 (the random-pair estimate)
  naive   - the textbook way: the full n x n Gram matrix and its upper triangle (float32; 1.6 GB + the mask)
            (only run with --naive; it is over the memory target by construction)
Reports the median wall time of the repeats and the peak extra RSS in MiB.

    python bench/bench_hamiltonian.py [--n 20000] [--d 256] [--repeats 5] [--naive]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def one(kind: str, n: int, d: int, repeats: int) -> dict:
    from hyperlatent.hamiltonian import overlap_distribution, overlap_stats
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fns = {
        'stats': lambda: overlap_stats(z),
        'hist': lambda: overlap_distribution(z),
        'pairs': lambda: overlap_stats(z, max_pairs=100_000, generator=torch.Generator().manual_seed(1)),
        'naive': lambda: _naive(z),
    }
    times = []
    for i in range(repeats + 1):  # the first run is a warm-up
        t = time.perf_counter()
        fns[kind]()
        if i:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {'kind': kind, 'n': n, 'd': d, 'median_s': statistics.median(times), 'peak_extra_mib': (peak - base) / 1024}


def _naive(z):
    u = z / z.norm(dim=1, keepdim=True)
    G = u @ u.T
    R = G[torch.triu(torch.ones_like(G, dtype=torch.bool), 1)].double()
    return R.mean(), R.var(correction=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=20_000)
    ap.add_argument('--d', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--naive', action='store_true')
    ap.add_argument('--one', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.n, a.d, a.repeats)))
        return
    print(f'torch threads: {torch.get_num_threads()} (shared machine: timings are indicative)')
    kinds = ['stats', 'pairs', 'hist'] + (['naive'] if a.naive else [])
    rows = {}
    for k in kinds:
        reps = a.repeats if k in ('stats', 'pairs') else max(1, a.repeats // 2)
        out = subprocess.run([sys.executable, __file__, '--one', k, '--n', str(a.n), '--d', str(a.d),
                              '--repeats', str(reps)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows[k] = r
        print(f"{k:6s} n={r['n']} d={r['d']}: median {r['median_s']:.3f} s, peak extra RSS {r['peak_extra_mib']:.0f} MiB")
    s = rows['stats']
    ok = s['median_s'] < 10 and s['peak_extra_mib'] < 1024
    print(f"exact overlap_stats target (< 10 s, < 1 GiB): {'met' if ok else 'NOT met'}")
    print(f"speed-up of the Gram-moment path over the tiled pair histogram: {rows['hist']['median_s'] / s['median_s']:.0f}x")
    if 'naive' in rows:
        print(f"speed-up over the full n x n Gram matrix: {rows['naive']['median_s'] / s['median_s']:.0f}x; "
              f"memory {rows['naive']['peak_extra_mib']:.0f} vs {s['peak_extra_mib']:.0f} MiB")


if __name__ == '__main__':
    main()
