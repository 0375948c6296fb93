"""Benchmark: exact chunked `knn_score` vs scikit-learn `NearestNeighbors(algorithm='brute')` and, when
installed, a faiss-cpu flat (exact) index `faiss.IndexFlatL2` (otherwise it prints 'faiss not installed').
`knn_score` runs with both candidate backends: 'torch' (our GEMM blocks) and, with faiss installed, 'faiss'
(faiss proposes the candidates, our float64 re-ranking and certificate make the result exact; what
backend='auto' uses for CPU float32). Raw faiss returns float32 distances that are *not* exact for close pairs.

Problem of issue 4: bank 60,000 x query 10,000 x d 128, float32, k = 3, on CPU. Each measurement runs in
a fresh subprocess so that its peak memory (VmHWM minus the resident size before the call, i.e. the
extra memory the search needs beyond the data) is its own. Prints medians over repeats and the ratio.

    python bench/bench_knn.py                 # the issue's size, 3 repeats
    python bench/bench_knn.py --bank 6000 --query 1000 --repeats 5   # quick
    python bench/bench_knn.py --bank 10000 --query 2000 --repeats 2 --calls 3   # < 1 minute on 2 busy cores
    python bench/bench_knn.py --bank 10000 --dim 784 --k 10 --self    # the leakage diagnostic: query = bank,
                                                                      # self excluded (sklearn: kneighbors())
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def worker(method: str, n_bank: int, n_query: int, d: int, k: int, self_: bool = False, calls: int = 1) -> None:
    import numpy as np
    import torch
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((n_bank, d), dtype=np.float32)
    query = bank if self_ else rng.standard_normal((n_query, d), dtype=np.float32)
    if method in ('hyperlatent', 'hyperlatent-faiss'):
        from hyperlatent.knn import knn_score
        backend = 'torch' if method == 'hyperlatent' else 'faiss'
        run = lambda: knn_score(bank, query, k, exclude_self=self_, backend=backend)
    elif method == 'faiss':
        import faiss

        def run():
            index = faiss.IndexFlatL2(d)
            index.add(bank)
            if self_:  # one extra neighbour, then drop each row's own match (ties with exact duplicates aside)
                D, I = index.search(query, k + 1)
                keep = I != np.arange(len(query))[:, None]
                D = np.stack([r[m][:k] for r, m in zip(D, keep)])
            else:
                D, _ = index.search(query, k)
            return np.sqrt(np.maximum(D, 0)).mean(1)  # faiss returns squared distances
    else:
        from sklearn.neighbors import NearestNeighbors
        nn = NearestNeighbors(n_neighbors=k, algorithm='brute')
        run = lambda: (nn.fit(bank).kneighbors() if self_ else nn.fit(bank).kneighbors(query))[0].mean(1)
    before = _rss_kib('VmRSS')
    out = []
    for i in range(calls):  # the first call's peak is the one reported (later calls reuse the freed memory)
        t0 = time.perf_counter()
        s = run()
        dt = time.perf_counter() - t0
        if i == 0:
            peak = _rss_kib('VmHWM')
        out.append({'seconds': dt, 'extra_peak_mib': (peak - before) / 1024, 'checksum': float(np.sum(s)),
                    'threads': torch.get_num_threads()})
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bank', type=int, default=60_000)
    p.add_argument('--query', type=int, default=10_000)
    p.add_argument('--dim', type=int, default=128)
    p.add_argument('--k', type=int, default=3)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--calls', type=int, default=1,
                   help='timed calls per fresh process (default 1; more = less start-up time, repeats x calls timings)')
    p.add_argument('--self', dest='self_', action='store_true', help='query is the bank, self-matches excluded')
    p.add_argument('--worker', choices=['hyperlatent', 'hyperlatent-faiss', 'sklearn', 'faiss'])
    a = p.parse_args()
    if a.worker:
        return worker(a.worker, a.bank, a.query, a.dim, a.k, a.self_, a.calls)
    if a.self_:
        a.query = a.bank
    print(f'knn_score vs sklearn NearestNeighbors(brute): bank {a.bank} x query {a.query} x d {a.dim}, k={a.k}, '
          f'{"query = bank, self excluded, " if a.self_ else ""}'
          f'float32, CPU, median of {a.repeats} interleaved fresh processes x {a.calls} timed call(s) each')
    res = {'hyperlatent': [], 'sklearn': []}
    try:
        import faiss  # noqa: F401
        res['faiss'] = []
        res['hyperlatent-faiss'] = []
    except ImportError:
        print('  faiss not installed: the faiss-cpu flat-index ratio is skipped')
    for _ in range(a.repeats):  # interleaved, so that a change in machine load hits both methods alike
        for method in res:
            out = subprocess.run([sys.executable, __file__, '--worker', method, '--bank', str(a.bank), '--query',
                                  str(a.query), '--dim', str(a.dim), '--k', str(a.k), '--calls', str(a.calls)]
                                 + ['--self'] * a.self_, capture_output=True, text=True, check=True)
            res[method].extend(json.loads(out.stdout.strip().splitlines()[-1]))
    for method, runs in res.items():
        t = statistics.median(r['seconds'] for r in runs)
        mem = max(r['extra_peak_mib'] for r in runs)
        print(f'  {method:17s} median {t:7.2f} s  (runs: {", ".join("%.2f" % r["seconds"] for r in runs)})  '
              f'extra peak memory {mem:7.1f} MiB  threads {runs[0]["threads"]}')
    c1, c2 = res['hyperlatent'][0]['checksum'], res['sklearn'][0]['checksum']
    print(f'  sum of scores: hyperlatent {c1:.6f}, sklearn {c2:.6f} (relative difference {abs(c1 - c2) / abs(c2):.1e})')
    th = statistics.median(r['seconds'] for r in res['hyperlatent'])
    ts = statistics.median(r['seconds'] for r in res['sklearn'])
    pairs = [s['seconds'] / h['seconds'] for h, s in zip(res['hyperlatent'], res['sklearn'])]
    print(f'  speed ratio sklearn / hyperlatent = {ts / th:.2f}x of the medians, median of paired ratios '
          f'{statistics.median(pairs):.2f}x  (>1 means knn_score is faster)')
    if 'faiss' in res:
        tf = statistics.median(r['seconds'] for r in res['faiss'])
        cf = res['faiss'][0]['checksum']
        pairs = [f['seconds'] / h['seconds'] for h, f in zip(res['hyperlatent'], res['faiss'])]
        print(f'  speed ratio faiss IndexFlatL2 / hyperlatent = {tf / th:.2f}x of the medians, median of paired ratios '
              f'{statistics.median(pairs):.2f}x (>1 means knn_score is faster); sum of scores faiss {cf:.6f} '
              f'(relative difference {abs(cf - c1) / abs(c1):.1e})')
        thf = statistics.median(r['seconds'] for r in res['hyperlatent-faiss'])
        cfx = res['hyperlatent-faiss'][0]['checksum']
        print(f"  knn_score(backend='faiss', exact): faiss IndexFlatL2 / it = {tf / thf:.2f}x, sklearn / it = "
              f"{ts / thf:.2f}x, backend 'torch' / 'faiss' = {th / thf:.2f}x of the medians; its sum of scores equals "
              f"backend 'torch': {cfx == c1}")
    else:
        print('  faiss not installed')
    print('  note: timings on a shared machine are noisy; compare ratios from the same run only.')


if __name__ == '__main__':
    main()
