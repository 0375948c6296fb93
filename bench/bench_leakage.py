"""Benchmark: exact neighborhood class leakage L_k on pixel-sized data (issue 6 targets).

Targets: m = 10,000 samples of dimension 784 in under 10 s on 2 CPU cores, m = 60,000 in under 2 minutes,
peak memory under 2 GiB. Data: uniform random float32 in [0, 1] (an MNIST-sized pixel matrix) with 10
random labels; k = 10. Each (implementation, m) runs in a fresh subprocess, so that its peak resident
memory (whole process: Python + torch + data) can be attributed to it. The baseline is scikit-learn's
NearestNeighbors(algorithm='brute', n_jobs=threads).kneighbors() (self excluded), which is the reference
computation of the spec (§9). Reports the median of repeats, the throughput and the speed ratio.

    python bench/bench_leakage.py [--sizes 10000 60000] [--repeats 3] [--big-repeats 1] [--sklearn-max 10000]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

D, K, N_CLASSES = 784, 10, 10
TARGET_S = {10_000: 10.0, 60_000: 120.0}
TARGET_MIB = 2048


def one(impl: str, m: int, repeats: int) -> dict:
    import torch
    rng = np.random.default_rng(0)
    X = rng.random((m, D), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, size=m)
    if impl == 'ours':
        from hyperlatent.leakage import neighborhood_leakage
        f = lambda: neighborhood_leakage(X, y, k=K)
    else:
        from sklearn.neighbors import NearestNeighbors

        def f():
            idx = NearestNeighbors(n_neighbors=K, algorithm='brute', n_jobs=torch.get_num_threads()).fit(X).kneighbors(
                return_distance=False)
            return float((y[idx] != y[:, None]).mean())
    times, cpus, val = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        val = f()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)  # CPU seconds of all threads of this process (load-independent-ish)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {'impl': impl, 'm': m, 'median_s': statistics.median(times), 'times': times, 'cpu_s': statistics.median(cpus),
            'L_k': val, 'peak_rss_mib': peak, 'threads': torch.get_num_threads()}


def run_sub(impl: str, m: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, '--one', impl, str(m), str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', type=int, nargs='+', default=[10_000, 60_000])
    ap.add_argument('--repeats', type=int, default=3, help='repeats for sizes <= 10,000')
    ap.add_argument('--big-repeats', type=int, default=1, help='repeats for larger sizes (each takes about a minute)')
    ap.add_argument('--sklearn-max', type=int, default=10_000, help='largest m for the scikit-learn baseline')
    ap.add_argument('--one', nargs=3, metavar=('IMPL', 'M', 'REPEATS'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), int(a.one[2]))))
        return
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float('nan')
    print(f'neighborhood_leakage, d = {D}, k = {K}, float32 uniform data; cpus = {os.cpu_count()}, load(1 min) = {load:.1f}')
    print('(the machine may be shared: wall times under load are upper bounds; CPU seconds / threads estimates the\n'
          ' wall time on an idle machine with that many cores, assuming the threads run in parallel)')
    ok = True
    for m in a.sizes:
        reps = a.repeats if m <= 10_000 else a.big_repeats
        r = run_sub('ours', m, reps)
        line = (f'm = {m:>6}: ours {r["median_s"]:7.2f} s wall (median of {reps}), {r["cpu_s"]:7.2f} s CPU '
                f'(/{r["threads"]} threads = {r["cpu_s"] / r["threads"]:.2f} s), {m / r["median_s"]:6.0f} samples/s, '
                f'peak RSS {r["peak_rss_mib"]:5.0f} MiB, L_k = {r["L_k"]:.4f}')
        tgt = TARGET_S.get(m)
        if tgt is not None:
            hit = r['median_s'] < tgt and r['peak_rss_mib'] < TARGET_MIB
            est = r['cpu_s'] / r['threads'] < tgt and r['peak_rss_mib'] < TARGET_MIB
            ok &= hit
            line += (f'  [target < {tgt:.0f} s and < {TARGET_MIB} MiB: {"met" if hit else "MISSED"} in wall time'
                     f'{"" if hit else ", " + ("met" if est else "missed") + " by the CPU-time estimate"}]')
        print(line, flush=True)
        if m <= a.sklearn_max:
            s = run_sub('sklearn', m, reps)
            same = 'same L_k' if abs(s['L_k'] - r['L_k']) < 1e-12 else f'L_k differs: {s["L_k"]:.6f}'
            print(f'           sklearn brute {s["median_s"]:7.2f} s wall, {s["cpu_s"]:7.2f} s CPU, peak RSS {s["peak_rss_mib"]:5.0f} MiB, '
                  f'ratio sklearn/ours = {s["median_s"] / r["median_s"]:.2f} ({same})', flush=True)
    print('all targets met' if ok else 'some targets missed (see above; check the machine load)')


if __name__ == '__main__':
    main()
