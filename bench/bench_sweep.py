"""Benchmark of hyperlatent.sweep on the tiny test notebook (tests/assets/tiny_sweep.ipynb).

1. Overhead per run on the local engine: wall time of a sweep of N tiny runs with --workers 1, divided by N
   (everything included: worker process, kernel start, papermill, status/results files). Target: < 5 s.
   For reference, the time of one bare `papermill.execute_notebook` call in this process (kernel start included).
2. Parallel speed-up: 8 tiny runs with workers=2 versus workers=1. Target: >= 1.6x on 2 cores.

Medians over --repeats repeats. Timings depend on the machine's load: report them with that caveat.
Run: python bench/bench_sweep.py [--repeats 3] [--runs 8]
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from hyperlatent.sweep import run_sweep

TINY = Path(__file__).resolve().parents[1] / 'tests' / 'assets' / 'tiny_sweep.ipynb'


def sweep_time(n_runs: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = run_sweep(TINY, {'x': list(range(n_runs))}, d, workers=workers, gpus=[], progress=False)
        dt = time.perf_counter() - t0
        assert res.ok, res.statuses
    return dt


def bare_papermill_time() -> float:
    import papermill
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        papermill.execute_notebook(str(TINY), f'{d}/out.ipynb', parameters={'output_dir': d}, kernel_name='python3',
                                   language='python', progress_bar=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--runs', type=int, default=8)
    a = ap.parse_args()
    print(f'cpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (other processes share the machine)')
    bare = statistics.median(bare_papermill_time() for _ in range(a.repeats))
    t1, t2 = [], []
    for _ in range(a.repeats):  # interleaved, so that load changes hit both alike
        t1.append(sweep_time(a.runs, 1))
        t2.append(sweep_time(a.runs, 2))
    m1, m2 = statistics.median(t1), statistics.median(t2)
    print(f'bare papermill run (in-process, kernel start included): {bare:.2f} s')
    print(f'local engine, {a.runs} runs, workers=1: {m1:.2f} s  -> {m1 / a.runs:.2f} s per run (target < 5 s)  '
          f'[all: {", ".join(f"{t:.1f}" for t in t1)}]')
    print(f'local engine, {a.runs} runs, workers=2: {m2:.2f} s  [all: {", ".join(f"{t:.1f}" for t in t2)}]')
    print(f'speed-up workers 2 vs 1: {m1 / m2:.2f}x (target >= 1.6x on 2 idle cores)')
    print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
