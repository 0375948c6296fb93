"""Benchmark: exact Boolean propagation of 100 random rules over 50 concepts for 100,000 samples (CPU).

Target (issue 7): under 1 s. Prints the median of several repeats, the throughput, and the ratio to a
per-rule numpy baseline that evaluates each rule's formula tree recursively on whole columns (no sharing).
Timings are on a shared, loaded machine: treat them as upper bounds.
"""
import random
import statistics
import time

import numpy as np
import torch

from hyperlatent.rules import Binary, Not, Var, compile_rules

K, R, N, REPEATS = 50, 100, 100_000, 5


def random_rule(rng, depth):
    if depth == 0 or rng.random() < 0.25:
        f = Var(f'c{rng.randrange(K)}')
    else:
        f = Binary(rng.choice(['and', 'or', 'xor', 'implies', 'iff']), random_rule(rng, depth - 1), random_rule(rng, depth - 1))
    return Not(f) if rng.random() < 0.3 else f


def column_eval(f, cols):
    "Baseline: recursive numpy evaluation of one formula tree on whole columns."
    if isinstance(f, Var): return cols[int(f.name[1:])]
    if isinstance(f, Not): return ~column_eval(f.arg, cols)
    l, r = column_eval(f.left, cols), column_eval(f.right, cols)
    return {'and': l & r, 'or': l | r, 'xor': l ^ r, 'implies': ~l | r, 'iff': l == r}[f.op]


def timeit(fn):
    ts = []
    for _ in range(REPEATS):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rng = random.Random(0)
    rules = [random_rule(rng, 4) for _ in range(R)]
    concepts = [f'c{k}' for k in range(K)]
    t0 = time.perf_counter()
    dag = compile_rules(rules, concepts=concepts)
    t_compile = time.perf_counter() - t0
    truth = np.random.default_rng(0).random((N, K)) < 0.5
    truth_t = torch.from_numpy(truth)
    cols = [truth[:, k] for k in range(K)]
    got = dag.root_truth(truth_t).numpy()
    want = np.stack([column_eval(f, cols) for f in rules], 1)
    assert (got == want).all(), 'propagation disagrees with the baseline'
    t_nodes = timeit(lambda: dag.evaluate(truth_t))
    t_roots = timeit(lambda: dag.root_truth(truth_t))
    t_base = timeit(lambda: [column_eval(f, cols) for f in rules])
    print(f'{R} rules, {K} concepts, {dag.num_nodes} nodes, depth {dag.max_depth}, {N:,} samples; compile {t_compile*1e3:.1f} ms')
    print(f'evaluate (all node truths):  {t_nodes:.3f} s   ({N / t_nodes / 1e6:.2f} M samples/s)   target < 1 s: {"PASS" if t_nodes < 1 else "FAIL"}')
    print(f'root_truth:                  {t_roots:.3f} s')
    print(f'per-rule numpy tree baseline:{t_base:.3f} s   ratio baseline/evaluate = {t_base / t_nodes:.2f}x')


if __name__ == '__main__':
    main()
