"""GPU check: one short script (< 3 min on a GPU) that exercises the CUDA paths of hyperlatent and prints a table.

1. `fit` with mixed precision (its own `amp=True`, float16 and bfloat16 autocast + GradScaler) for one epoch of the
   reference recipe on CIFAR-shaped synthetic data (residual VAE, d = 128, class-axis objective, hflip): wall time,
   images/s, finite losses, parameters still float32.
2. `knn_search` on CUDA against the CPU (float64 inputs): identical neighbour indices asserted, max |distance| gap.
3. Steps/s of the compression objective and of the beta-VAE KL (forward + backward of the regulariser alone on a
   batch of 200 encoder outputs) at d = 128 / 512 / 2048, and their ratio.
4. Sweep GPU pinning: `hyperlatent.sweep.detect_gpus` / `assign_gpus`, then one subprocess per slot with that
   CUDA_VISIBLE_DEVICES must see exactly one device (the one assigned).

Without CUDA it exits with status 2 ("no CUDA device"), unless `--allow-cpu`: then the same checks run on the CPU
at small sizes (AMP is reported as not applicable: `fit` allows it on CUDA only; kNN is compared with a brute-force
`torch.cdist` search instead) and the exit status is 0 when they pass.

    python bench/gpu_check.py [--allow-cpu] [--quick] [--dims 128 512 2048] [--json out.json]
    make gpu-check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)


def check_fit(dev: torch.device, n: int, quick: bool) -> list[dict]:
    from hyperlatent.train import fit
    from hyperlatent.vae import REFERENCE_RUN, objective_preset, residual_vae
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = (torch.rand(n, 3, 32, 32, generator=g) * 0.5 + y[:, None, None, None] / 20).clamp(0, 1)
    channels = (4, 8, 8) if quick else REFERENCE_RUN['channels']
    settings = [('fp32', False, torch.float16)]
    if dev.type == 'cuda':
        settings += [('amp fp16', True, torch.float16)]
        if torch.cuda.is_bf16_supported():
            settings += [('amp bf16', True, torch.bfloat16)]
    rows = []
    for label, amp, amp_dtype in settings:
        torch.manual_seed(0)
        model = residual_vae(REFERENCE_RUN['latent_dim'], 32, channels, project=True)
        _sync(dev)
        t = time.perf_counter()
        res = fit(model, (x, y), objective_preset('p2_cifar10_conditional'), epochs=1, recipe='reference',
                  batch_size=min(REFERENCE_RUN['batch_size'], n // 2), augment='hflip', conditional=True, amp=amp,
                  amp_dtype=amp_dtype, device=dev, progress=False, seed=0)
        _sync(dev)
        sec = time.perf_counter() - t
        h = res.history.iloc[-1]
        finite = all(math.isfinite(float(h[c])) for c in ('rec', 'kl', 'loss'))
        dtypes = {p.dtype for p in res.model.parameters()}
        ok = finite and dtypes == {torch.float32} and res.device.type == dev.type
        rows.append(dict(check='fit 1 epoch (reference recipe, d=128)', setting=f'{label}, {n} images, {dev.type}',
                         value=n / sec, unit='images/s', ok=ok,
                         note=f'rec {float(h["rec"]):.4g}, kl {float(h["kl"]):.4g}, {sec:.2f} s'))
    if dev.type != 'cuda':
        rows.append(dict(check='fit AMP', setting='amp=True', value=float('nan'), unit='', ok=True,
                         note='not applicable: fit allows amp on CUDA only (ValueError elsewhere)'))
    return rows


def check_knn(dev: torch.device, n_bank: int, n_query: int, d: int = 128, k: int = 3) -> list[dict]:
    from hyperlatent.knn import knn_search
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(n_bank, d, generator=g, dtype=torch.float64)
    query = torch.randn(n_query, d, generator=g, dtype=torch.float64)
    t = time.perf_counter()
    dc, ic = knn_search(bank, query, k, device='cpu')
    t_cpu = time.perf_counter() - t
    if dev.type == 'cuda':
        knn_search(bank[:64], query[:64], k, device=dev)  # warm-up
        _sync(dev)
        t = time.perf_counter()
        do, io = knn_search(bank, query, k, device=dev)
        _sync(dev)
        t_other, other = time.perf_counter() - t, 'cuda'
        do, io = do.cpu(), io.cpu()
    else:  # the second implementation: brute force
        t = time.perf_counter()
        full = torch.cdist(query, bank)
        do, io = full.topk(k, largest=False, sorted=True)
        t_other, other = time.perf_counter() - t, 'torch.cdist brute force'
    same = bool(torch.equal(ic, io))
    gap = float((dc - do).abs().max())
    return [dict(check=f'knn_search k={k}, d={d}', setting=f'{n_query} queries x {n_bank} bank, cpu vs {other}',
                 value=gap, unit='max |dist gap|', ok=same and gap < 1e-9,
                 note=f'indices identical: {same}; cpu {t_cpu:.3f} s, {other} {t_other:.3f} s')]


def check_objective(dev: torch.device, dims: list[int], repeats: int, batch: int = 200) -> list[dict]:
    from hyperlatent.vae import BetaObjective, CompressionObjective
    rows = []
    for d in dims:
        g = torch.Generator().manual_seed(2)
        mu = (torch.randn(batch, d, generator=g) + 0.3).to(dev).requires_grad_(True)
        logvar = (0.1 * torch.randn(batch, d, generator=g) - 2).to(dev).requires_grad_(True)
        rate = {}
        objs = {'beta': BetaObjective('mean'), 'compression': CompressionObjective('generation')}

        def step(obj):
            loss = obj(mu, logvar)['total']
            loss.backward()
            mu.grad = logvar.grad = None
            return loss
        for obj in objs.values():  # warm-up of both before timing either
            for _ in range(3):
                step(obj)
        for name, obj in objs.items():
            _sync(dev)
            t = time.perf_counter()
            for _ in range(repeats):
                loss = step(obj)
            _sync(dev)
            rate[name] = repeats / (time.perf_counter() - t)
            if not torch.isfinite(loss):
                rate[name] = float('nan')
        ok = all(math.isfinite(v) for v in rate.values())
        rows.append(dict(check=f'objective fwd+bwd, batch {batch}', setting=f'd={d}, {dev.type}',
                         value=rate['compression'], unit='compression steps/s', ok=ok,
                         note=f'beta-VAE {rate["beta"]:.1f} steps/s; compression/beta time ratio '
                              f'{rate["beta"] / rate["compression"]:.2f}'))
    return rows


def check_sweep_pinning(cuda: bool) -> list[dict]:
    from hyperlatent.sweep import assign_gpus, detect_gpus
    gpus = detect_gpus()
    slots = assign_gpus(max(2, 2 * len(gpus)), gpus)
    expect = [gpus[i % len(gpus)] for i in range(len(slots))] if gpus else [None] * len(slots)
    ok = slots == expect
    rows = [dict(check='sweep assign_gpus', setting=f'{len(slots)} slots, gpus {gpus}', value=float(len(gpus)),
                 unit='GPUs detected', ok=ok and (bool(gpus) == cuda), note=f'slots -> {slots}')]
    if gpus:
        code = 'import torch; print(torch.cuda.device_count(), torch.cuda.get_device_name(0))'
        for dev_id in dict.fromkeys(slots):  # one subprocess per distinct pinned id (at most 4)
            if len(rows) > 4:
                break
            env = {**os.environ, 'CUDA_VISIBLE_DEVICES': dev_id}
            r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
            seen = r.stdout.strip()
            rows.append(dict(check='sweep slot pinning', setting=f'CUDA_VISIBLE_DEVICES={dev_id}',
                             value=float(seen.split()[0]) if seen[:1].isdigit() else float('nan'), unit='devices seen',
                             ok=r.returncode == 0 and seen.startswith('1 '), note=seen or r.stderr.strip()[-120:]))
    return rows


def print_table(rows: list[dict]) -> None:
    w = [max(len(str(r[c])) for r in rows + [dict(check='check', setting='setting')]) for c in ('check', 'setting')]
    print(f'{"check":<{w[0]}}  {"setting":<{w[1]}}  {"value":>12}  {"unit":<20}  ok    note')
    for r in rows:
        v = '' if not math.isfinite(r['value']) else f'{r["value"]:.4g}'
        print(f'{r["check"]:<{w[0]}}  {r["setting"]:<{w[1]}}  {v:>12}  {r["unit"]:<20}  '
              f'{"yes" if r["ok"] else "NO ":<4}  {r["note"]}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--allow-cpu', action='store_true', help='without CUDA, run the same checks on the CPU (small sizes)')
    ap.add_argument('--quick', action='store_true', help='tiny sizes (tests)')
    ap.add_argument('--dims', type=int, nargs='+', default=None, help='latent dims of the objective timing')
    ap.add_argument('--json', default=None, help='also write the rows to this JSON file')
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print('gpu_check: no CUDA device (torch.cuda.is_available() is False). Install a CUDA build of torch, e.g.\n'
              '  make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"\n'
              'or run the same checks on the CPU with --allow-cpu.', file=sys.stderr)
        return 2
    dev = torch.device('cuda') if cuda else torch.device('cpu')
    small = a.quick or not cuda
    dims = a.dims or ([16, 64] if a.quick else [128, 512] if not cuda else [128, 512, 2048])
    info = (f'torch {torch.__version__}, ' + (f'CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}' if cuda
                                               else f'CPU only ({torch.get_num_threads()} threads), --allow-cpu'))
    print(f'gpu_check: {info}')
    t0 = time.perf_counter()
    rows = []
    rows += check_fit(dev, n=40 if a.quick else 400 if small else 4000, quick=a.quick)
    rows += check_knn(dev, n_bank=300 if a.quick else 5000 if small else 50000, n_query=100 if a.quick else 2000 if small else 20000)
    rows += check_objective(dev, dims, repeats=5 if a.quick else 20 if small else 100)
    rows += check_sweep_pinning(cuda)
    print_table(rows)
    ok = all(r['ok'] for r in rows)
    print(f'gpu_check: {"all checks passed" if ok else "SOME CHECKS FAILED"} in {time.perf_counter() - t0:.1f} s on {dev.type}')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'device': dev.type, 'info': info, 'ok': ok, 'rows': rows}, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
