"""Tests of hyperlatent.protocols (trainers and the evaluation protocols) against independent oracles
(scikit-learn, labels and class splits written out by hand), and of the deprecated import path in hyperlatent.detect."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

import hyperlatent.detect as det
import hyperlatent.protocols as prot
from hyperlatent.data import LabeledDataset, load_dataset
from hyperlatent.detect import MODEL_SCORES, FittedModel
from hyperlatent.protocols import (ProtocolResult, conditional_protocol, cross_dataset_protocol, evaluate_split,
                                   unconditional_protocol, vae_trainer)


@pytest.fixture(scope='module')
def digits():
    return load_dataset('digits', split='train'), load_dataset('digits', split='test')


class _Identity(torch.nn.Module):
    "A 'VAE' whose encoder mean is the flattened input and whose decoder is the identity."

    def __init__(self, shape):
        super().__init__()
        self.shape, self.w = tuple(shape), torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return x.flatten(1) + 0 * self.w, torch.zeros_like(x.flatten(1))

    def decode(self, z):
        return z.reshape(len(z), *self.shape)


class _Spy:
    "A trainer that records what the protocol hands it and returns the identity 'VAE'."

    def __init__(self):
        self.seen = []

    def __call__(self, data, seed=0, conditional=False):
        self.seen.append((data, seed, conditional))
        return FittedModel(_Identity(data.x.shape[1:]), None, conditional=conditional)


_CHEAP = dict(baselines=(), latent_baselines=())


# ---------------------------------------------------------------- moved from test_detect.py (unchanged assertions)
def test_unconditional_protocol_table(digits):
    tr, te = digits
    r = unconditional_protocol(tr, te, {'beta': vae_trainer('beta', latent_dim=4, epochs=2)}, held_out=[3, 7],
                               baselines=('knn', 'iforest'), latent_baselines=('iforest',))
    t = r.table
    assert set(t.split) == {'loco_3', 'loco_7'}
    assert len(t) == 2 * (2 + len(MODEL_SCORES) + 1)  # per split: 2 pixel baselines + 5 model scores + latent IF
    assert not t.duplicated(['split', 'model', 'score', 'seed']).any()
    for split, c in (('loco_3', 3), ('loco_7', 7)):
        np.testing.assert_array_equal(r.labels[split], (te.y == c).numpy())
    row = t[(t.split == 'loco_3') & (t.model == 'pixel') & (t.score == 'knn')].iloc[0]
    # the pixel kNN baseline is independent of the VAE: recompute it with sklearn
    normal = tr.x[tr.y != 3].reshape(-1, 64).numpy()
    ref = NearestNeighbors(n_neighbors=3).fit(normal).kneighbors(te.x.reshape(-1, 64).numpy())[0].mean(1)
    assert row.auroc == pytest.approx(roc_auc_score((te.y == 3).numpy(), ref), abs=1e-12)
    f, tp = r.roc[('loco_3', 'pixel', 'knn', 0)]
    assert f[0] == 0 and tp[-1] == 1
    assert set(r.summary().columns) >= {'model', 'score', 'auroc_mean', 'fpr95_mean'}


def test_conditional_protocol_uses_labels(digits):
    tr, te = digits
    r = conditional_protocol(tr, te, {'p2-class-axes': vae_trainer('p2-class-axes', latent_dim=10, epochs=2, batch_size=50)},
                             id_classes=range(5), baselines=(), latent_baselines=(), keep_models=True)
    np.testing.assert_array_equal(r.labels['cond_01234'], (te.y >= 5).numpy())
    fm = r.fitted[('cond_01234', 'p2-class-axes', 0)]
    assert fm.conditional and fm.objective.conditional and fm.objective.n_classes == 5
    assert len(r.table) == len(MODEL_SCORES)


# ---------------------------------------------------------------- what the protocols hand the trainers (class splits)
def test_unconditional_protocol_trains_on_the_other_classes_unlabelled(digits):
    tr, te = digits
    spy = _Spy()
    r = unconditional_protocol(tr, te, {'spy': spy}, held_out=[0, 9], seeds=(0, 4), **_CHEAP)
    assert [(c, s) for _, s, c in spy.seen] == [(False, 0), (False, 4)] * 2
    for (data, _, _), c in zip(spy.seen, (0, 0, 9, 9)):
        keep = np.flatnonzero(tr.y.numpy() != c)  # the other classes, in data order
        np.testing.assert_array_equal(data.x.numpy(), tr.x.numpy()[keep])
        assert data.classes == ['normal'] and (data.y == 0).all()
        np.testing.assert_array_equal(data.extras['y_orig'].numpy(), tr.y.numpy()[keep])
    for c in (0, 9):
        np.testing.assert_array_equal(r.labels[f'loco_{c}'], (te.y == c).numpy().astype(int))
    with pytest.raises(ValueError, match=r'held_out classes must lie in \[0, 10\)'):
        unconditional_protocol(tr, te, {'spy': spy}, held_out=[-1])


def test_conditional_protocol_relabels_the_id_classes(digits):
    tr, te = digits
    spy = _Spy()
    r = conditional_protocol(tr, te, {'spy': spy}, id_classes=[8, 1, 4], **_CHEAP)
    (data, _, cond), = spy.seen
    y = tr.y.numpy()
    keep = np.flatnonzero(np.isin(y, [1, 4, 8]))
    np.testing.assert_array_equal(data.x.numpy(), tr.x.numpy()[keep])
    np.testing.assert_array_equal(data.y.numpy(), np.searchsorted([1, 4, 8], y[keep]))  # 1 -> 0, 4 -> 1, 8 -> 2
    assert data.classes == ['1', '4', '8'] and cond
    np.testing.assert_array_equal(r.labels['cond_148'], ~np.isin(te.y.numpy(), [1, 4, 8]))
    spy2 = _Spy()
    conditional_protocol(tr, te, {'spy': spy2}, id_classes=['8', '1', '4'], split='by_name', **_CHEAP)
    np.testing.assert_array_equal(spy2.seen[0][0].y.numpy(), data.y.numpy())  # class names select the same split
    with pytest.raises(ValueError, match='ood='):
        conditional_protocol(tr, te, {'spy': spy})
    with pytest.raises(ValueError, match='id_classes'):
        conditional_protocol(tr, te, {'spy': spy}, id_classes=[1, 1])


def test_cross_dataset_protocol_labels_and_order(digits):
    tr, te = digits
    ood = LabeledDataset(1 - te.x[:25], te.y[:25], te.classes, 'inverted', 'test', 'digits, 1 - x')
    spy = _Spy()
    r = cross_dataset_protocol(tr, te, ood, {'spy': spy}, baselines=('knn',), latent_baselines=())
    (data, _, cond), = spy.seen
    assert cond and torch.equal(data.y, tr.y) and torch.equal(data.x, tr.x)
    split = 'digits_vs_inverted'
    np.testing.assert_array_equal(r.labels[split], np.r_[np.zeros(len(te)), np.ones(25)])
    # the identity 'VAE' has the pixels as latents, so its kNN score is the pixel kNN baseline (sklearn)
    test_x = np.r_[te.x.reshape(len(te), -1).numpy(), ood.x.reshape(25, -1).numpy()].astype(np.float64)
    ref = NearestNeighbors(n_neighbors=3).fit(tr.x.reshape(len(tr), -1).double().numpy()).kneighbors(test_x)[0].mean(1)
    np.testing.assert_allclose(r.scores[(split, 'spy', 'knn', 0)], ref, rtol=1e-5)
    np.testing.assert_allclose(r.scores[(split, 'pixel', 'knn', 0)], ref, rtol=1e-10)
    bad = LabeledDataset(torch.zeros(3, 64), torch.zeros(3, dtype=torch.int64), ['a'], 'flat', 'test', 'zeros')
    with pytest.raises(ValueError, match='ood inputs must have the shape'):
        cross_dataset_protocol(tr, te, bad, {'spy': spy})


def test_protocols_refuse_a_test_set_with_other_classes(digits):
    tr, te = digits
    from hyperlatent.data import select_classes
    with pytest.raises(ValueError, match='test must have the classes of train'):
        unconditional_protocol(tr, select_classes(te, [0, 1]), {'spy': _Spy()})


def test_evaluate_split_and_result_arithmetic(digits):
    tr, te = digits
    lab = (te.y == 2).numpy()
    r = evaluate_split('s', tr, te.x, lab, {'spy': _Spy()}, baselines=('knn',), latent_baselines=('iforest',))
    row = r.table.set_index(['model', 'score']).loc[('pixel', 'knn')]
    assert row.auroc == pytest.approx(roc_auc_score(lab, r.scores[('s', 'pixel', 'knn', 0)]), abs=1e-12)
    np.testing.assert_array_equal(r.scores[('s', 'spy', 'recon', 0)], 0)  # identity decoder
    both = r + evaluate_split('t', tr, te.x, lab, {'spy': _Spy()}, seeds=(1,), baselines=('knn',), latent_baselines=())
    assert isinstance(both, ProtocolResult) and set(both.labels) == {'s', 't'} and len(both.table) == len(r.table) + 6
    with pytest.raises(ValueError, match='one entry per test input'):
        evaluate_split('s', tr, te.x, lab[:-1], {})


# ---------------------------------------------------------------- trainers
def test_vae_trainer_gains_from_the_registry(digits):
    tr, _ = digits
    small = tr.subset(range(120))
    fm = vae_trainer('p1-full', latent_dim=4, dataset='fashion_mnist', epochs=1)(small, 0, False)
    assert tuple(fm.objective.gains) == (1000.0, 300.0, 225000.0, 500.0)  # spec §3e, FMNIST row
    fm = vae_trainer('p1-full', latent_dim=4, epochs=1)(small, 0, False)
    assert tuple(fm.objective.gains) == (1000.0, 300.0, 50000.0, 500.0)  # default: make_objective's (MNIST row)
    beta = vae_trainer('beta', latent_dim=4, dataset='cifar10', epochs=1)(small, 0, False)  # gains ignored by beta
    assert not hasattr(beta.objective, 'gains') and not beta.model.project
    with pytest.raises(ValueError, match='not both'):
        vae_trainer('p2-vmf', dataset='digits', gains=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown dataset 'svhm'"):
        vae_trainer('p2-vmf', dataset='svhm')


# ---------------------------------------------------------------- the old import path
@pytest.mark.parametrize('name', ['vae_trainer', 'ProtocolResult', 'evaluate_split', 'unconditional_protocol',
                                  'conditional_protocol', 'cross_dataset_protocol'])
def test_old_detect_path_warns_and_gives_the_same_object(name):
    with pytest.warns(DeprecationWarning, match=f'hyperlatent.protocols.{name}'):
        obj = getattr(det, name)
    assert obj is getattr(prot, name)
    ns = {}
    with pytest.warns(DeprecationWarning):
        exec(f'from hyperlatent.detect import {name}', ns)  # the `from ... import` spelling goes through __getattr__ too
    assert ns[name] is getattr(prot, name)
    assert name not in det.__all__ and name in prot.__all__


def test_detect_still_has_its_own_names_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        from hyperlatent.detect import VAEDetector, build_vae, encode_bank, model_scores  # noqa: F401
        from hyperlatent.vae import build_vae as bv
    assert build_vae is bv
    with pytest.raises(AttributeError, match='no_such_name'):
        det.no_such_name


def test_protocols_reexports_the_registry_and_vocabulary_of_vae():
    import hyperlatent.vae as vae
    for name in ('DATASET_SPECS', 'DatasetSpec', 'dataset_spec', 'OBJECTIVES', 'make_objective', 'build_vae'):
        assert getattr(prot, name) is getattr(vae, name) and name in prot.__all__
