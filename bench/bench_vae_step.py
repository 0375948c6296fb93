"""Benchmark: training-step time of the compression VAE over a beta-VAE step with the same network (issue 3).

Workload: the same MLP VAE (MNIST-sized input 1x28x28, hidden (512, 256), samples projected to radius sqrt(d)),
batch 200, CPU, fp32. One step = forward (encode, reparameterise, decode) + reconstruction loss + regulariser
+ backward + Adam step. The regulariser is `BetaObjective('mean')` or `CompressionObjective('generation')`.
The two variants are timed interleaved (A, B, A, B, ...) so that machine load affects both alike; the report is
the median step time of each and their ratio. Target: ratio <= 1.15 at d = 512.

    python bench/bench_vae_step.py [--dims 128 512 2048] [--repeats 30] [--threads N]
"""
import argparse
import statistics
import time

import torch

from hyperlatent.vae import BetaObjective, CompressionObjective, mlp_vae, reconstruction_loss

BATCH = 200
INPUT = (1, 28, 28)
HIDDEN = (512, 256)


def make_step(d: int, objective, seed: int = 0):
    torch.manual_seed(seed)
    model = mlp_vae(INPUT, d, hidden=HIDDEN, project=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, *INPUT, generator=gen)

    def step():
        out = model(x, generator=gen)
        loss = reconstruction_loss(out.recon, x) + 1e-6 * objective(out.mu, out.logvar)['total']
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def bench(d: int, repeats: int) -> dict:
    steps = {'beta': make_step(d, BetaObjective('mean')), 'compression': make_step(d, CompressionObjective('generation'))}
    times = {k: [] for k in steps}
    for k, s in steps.items():  # warm-up
        for _ in range(3):
            s()
    for _ in range(repeats):
        for k, s in steps.items():
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {'d': d, 'beta_ms': 1e3 * med['beta'], 'compression_ms': 1e3 * med['compression'],
            'ratio': med['compression'] / med['beta']}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--dims', type=int, nargs='+', default=[128, 512, 2048])
    ap.add_argument('--repeats', type=int, default=30)
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f'MLP VAE {INPUT} -> {HIDDEN} -> d, batch {BATCH}, CPU, {torch.get_num_threads()} threads, '
          f'median of {a.repeats} interleaved steps (forward + backward + Adam)')
    print(f'{"d":>6} {"beta-VAE ms":>12} {"compression ms":>15} {"ratio":>7}')
    for d in a.dims:
        r = bench(d, a.repeats)
        flag = '' if d != 512 else ('  (target <= 1.15: ' + ('met' if r['ratio'] <= 1.15 else 'NOT met') + ')')
        print(f'{r["d"]:>6} {r["beta_ms"]:>12.2f} {r["compression_ms"]:>15.2f} {r["ratio"]:>7.3f}{flag}')


if __name__ == '__main__':
    main()
