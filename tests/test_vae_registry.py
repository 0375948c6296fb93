"""Tests of the dataset registry of hyperlatent.vae (DatasetSpec, DATASET_SPECS, dataset_spec) and of build_vae:
gains against spec §3e's table typed here, families against shapes written out by hand."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperlatent.data import _ALIASES, DATASETS, load_dataset
from hyperlatent.vae import (DATASET_SPECS, PRESETS, DatasetSpec, ResBlock, build_vae, dataset_gains, dataset_spec,
                             network_family)

# specs/hcvae.md §3e (R1 training_func_v1.calc_kl 'KLDAle'): (G_phi_mu, G_r_mu, G_phi_sigma, G_r_sigma)
PAPER = {'mnist': (1000, 300, 50000, 500), 'fmnist': (1000, 300, 225000, 500), 'cifar10': (1000, 300, 500000, 500)}
# the row each data name takes: its own where the paper has one; digits -> MNIST (grey digits), CIFAR-100 and the
# 64x64 RGB folder sets -> the natural-image row that R1 also uses for SVHN, CelebA and Galaxy Zoo
ROW = {'digits': 'mnist', 'mnist': 'mnist', 'fashion_mnist': 'fmnist', 'cifar10': 'cifar10', 'cifar100': 'cifar10',
       'cifar100_coarse': 'cifar10', 'imagenette': 'cifar10', 'mars_novelty': 'cifar10', 'galaxy_zoo': 'cifar10'}
SHAPE = {'digits': (1, 8, 8), 'mnist': (1, 28, 28), 'fashion_mnist': (1, 28, 28), 'cifar10': (3, 32, 32),
         'cifar100': (3, 32, 32), 'cifar100_coarse': (3, 32, 32), 'imagenette': (3, 64, 64),
         'mars_novelty': (3, 64, 64), 'galaxy_zoo': (3, 64, 64)}
FAMILY = {'digits': 'mlp', 'mnist': 'mlp', 'fashion_mnist': 'mlp'}  # the rest: 'residual'


def _is_residual(m):
    return any(isinstance(u, ResBlock) for u in m.modules())


def test_registry_covers_every_data_name_and_alias():
    assert list(DATASET_SPECS) == list(DATASETS) and set(ROW) == set(DATASETS)
    for alias, name in _ALIASES.items():
        assert dataset_spec(alias) is DATASET_SPECS[name]
        assert dataset_spec(alias.upper().replace('_', '-')) is DATASET_SPECS[name]  # load_dataset's spellings
    with pytest.raises(ValueError, match="unknown dataset 'svhm'"):
        dataset_spec('svhm')
    with pytest.raises(TypeError, match='dataset must be a str'):
        dataset_spec(None)


@pytest.mark.parametrize('name', DATASETS)
def test_every_data_name_resolves_to_its_paper_gains_and_family(name):
    s = dataset_spec(name)
    assert isinstance(s, DatasetSpec) and s.name == name
    assert s.gains == PAPER[ROW[name]] and dataset_gains(name) == s.gains
    assert s.input_shape == SHAPE[name]
    assert s.family == FAMILY.get(name, 'residual') == network_family(s.input_shape)
    assert s.presets[0] == f'p1_{ROW[name]}' and all(p in PRESETS for p in s.presets)
    assert tuple(PRESETS[s.presets[0]]['gains']) == s.gains  # the P1 preset it names uses the same gains
    assert _is_residual(build_vae(s.input_shape, 4)) == (s.family == 'residual')


def test_registry_shape_matches_the_loader_and_is_frozen():
    assert dataset_spec('digits').input_shape == load_dataset('digits', split='test').shape
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_spec('mnist').gains = (1, 1, 1, 1)
    assert dataset_spec('cifar10').presets == ('p1_cifar10', 'p2_cifar10_conditional', 'p2_cifar10_vmf')
    assert dataset_spec('mars').presets == ('p1_cifar10', 'p2_unconditional')


@pytest.mark.parametrize('shape,family', [((1, 8, 8), 'mlp'), ((1, 28, 28), 'mlp'), ((64,), 'mlp'), (12, 'mlp'),
                                          ((3, 32, 64), 'mlp'), ((3, 48, 48), 'mlp'), ((2, 16), 'mlp'),
                                          ((3, 32, 32), 'residual'), ((1, 32, 32), 'residual'), ((3, 64, 64), 'residual'),
                                          (torch.Size([3, 32, 32]), 'residual'), (np.array([1, 64, 64]), 'residual')])
def test_build_vae_family_per_shape(shape, family):
    m = build_vae(shape, 6, project=True)
    assert _is_residual(m) == (family == 'residual') and network_family(shape) == family
    assert m.project and m.latent_dim == 6
    want = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    with torch.no_grad():
        assert tuple(m.eval().decode(torch.zeros(2, 6)).shape) == (2, *want)


def test_build_vae_hidden_and_bad_shapes():
    m = build_vae((1, 8, 8), 4, hidden=(16, 8))
    assert [l.out_features for l in m.encoder if isinstance(l, torch.nn.Linear)] == [16, 8, 8]
    for bad in [(1, 8.5, 8), (0, 8, 8), (), 'abc']:
        with pytest.raises(ValueError, match='input_shape must be'):
            build_vae(bad, 4)


def test_no_dataset_if_ladder_in_the_package():
    """Per-dataset decisions go through the registry: no `if dataset == ...` anywhere, and no dataset-name branches in the
    modules that build and train networks (hyperlatent.data's readers dispatch on the name to pick a file format)."""
    pkg = Path(__file__).resolve().parents[1] / 'hyperlatent'
    names = '|'.join(sorted({*DATASETS, *_ALIASES, 'fmnist', 'svhn', 'celeba64'}, key=len, reverse=True))
    ladder = re.compile(r"\bdataset\s*(==|!=|\bin\b)")
    branch = re.compile(rf"((==|!=)\s*|\bif\b.*\bin\s*\(?)['\"]({names})['\"]")  # a test, not a `for` loop
    hits = [f'{p.name}:{i}' for p in pkg.glob('*.py') for i, l in enumerate(p.read_text().splitlines(), 1)
            if ladder.search(l) or (p.stem in ('vae', 'train', 'detect', 'protocols', 'generate') and branch.search(l))]
    assert not hits, hits
