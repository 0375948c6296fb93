"""Tests of hyperlatent.chimera against independent oracles (spec chimera.md §13)."""
import hashlib
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hyperlatent.chimera import (LeafBank, MonolithicEvaluator, RuleEvaluator, _node_examples, aggregate_scores,
                                 attribute, chimera_batch, cyclic_derangement, fit_leaf_bank, independent_events,
                                 make_chimera_toy, pack_gate_input, stratified_pairing, train_evaluator,
                                 train_monolithic)
from hyperlatent.rules import compile_rules

torch.set_num_threads(1)  # tiny networks: avoid thread contention on shared CPUs

PY_OPS = {'and': lambda l, r: l and r, 'or': lambda l, r: l or r, 'implies': lambda l, r: (not l) or r,
          'iff': lambda l, r: l == r}


def _hash(module):
    h = hashlib.sha256()
    for p in module.state_dict().values():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize('op', list(PY_OPS))
def test_chimera_targets_and_columns(op):
    g = torch.Generator().manual_seed(0)
    B, F = 33, 5
    for nl, nr in itertools.product([False, True], repeat=2):
        left, right = torch.randn(B, F, generator=g), torch.randn(B, F, generator=g)
        tl, tr = torch.rand(B, generator=g) < 0.5, torch.rand(B, generator=g) < 0.5
        pi = torch.randperm(B, generator=g)
        cb = chimera_batch([left, right], [tl, tr], op, [nl, nr], perms=[pi])
        want = [float(PY_OPS[op](bool(tl[i]) ^ nl, bool(tr[pi[i]]) ^ nr)) for i in range(B)]
        assert cb.targets.tolist() == want
        assert set(cb.targets.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(cb.features[:, :F], left)
        assert torch.equal(cb.features[:, F + 1:2 * F + 1], right[pi])
        assert (cb.features[:, F] == float(nl)).all() and (cb.features[:, 2 * F + 1] == float(nr)).all()


def test_repo_example_creates_unseen_violation():
    cb = chimera_batch([torch.zeros(2, 1), torch.zeros(2, 1)], [torch.tensor([True, False]), torch.tensor([True, False])],
                       'implies', [False, False], perms=[torch.tensor([1, 0])])
    assert cb.targets.tolist() == [0.0, 1.0]


def test_cyclic_derangement():
    g = torch.Generator().manual_seed(1)
    assert cyclic_derangement(1).tolist() == [0]
    for n in range(2, 60):
        p = cyclic_derangement(n, g)
        assert sorted(p.tolist()) == list(range(n))
        assert (p != torch.arange(n)).all()
    with pytest.raises(ValueError):
        cyclic_derangement(0)


def test_coverage_of_violations_on_normal_only_data():
    toy = make_chimera_toy(n_train=6000, n_normal=0, n_per_rule=0, seed=3)
    dag = toy.dag
    T = dag.evaluate(toy.c_train)
    node = dag.roots[dag.rule_names.index('R1')]  # A -> B
    a, b = dag.children[node]
    assert not (T[:, a] & ~T[:, b]).any()  # the same-image set has no (A=1, B=0) pair
    g = torch.Generator().manual_seed(0)
    B, n_batches = 256, 200
    pA, pnotB = T[:, a].float().mean().item(), (~T[:, b]).float().mean().item()
    count = 0
    for _ in range(n_batches):
        idx = torch.randint(0, T.shape[0], (B,), generator=g)
        z = torch.zeros(B, 2)
        cb = chimera_batch([z, z], [T[idx, a], T[idx, b]], 'implies', [False, False], generator=g)
        count += int((cb.targets == 0).sum())
    mean = n_batches * B * pA * pnotB  # independent pairing: P(L = 1) P(R = 0) per pair
    assert abs(count - mean) < 5 * math.sqrt(mean), (count, mean)
    assert count > 0


def test_stratified_pairing_reaches_rho():
    g = torch.Generator().manual_seed(0)
    tl = torch.rand(512, generator=g) < 0.96
    tr = torch.rand(512, generator=g) < 0.95
    p = stratified_pairing(tl, tr, rho=0.1, generator=g)
    assert (p != torch.arange(512)).all()
    for a, b in itertools.product([False, True], repeat=2):
        frac = ((tl == a) & (tr[p] == b)).float().mean().item()
        if a is False:  # only ~4% of rows have t_L = 0: rho is infeasible there; both partners still appear
            assert frac > 0
        else:
            assert frac >= 0.08, (a, b, frac)


def test_packing_consistency_train_and_predict_paths():
    dag = compile_rules({'r': '(A & ~B) -> C'})
    ev = RuleEvaluator(dag, feature_dim=4, seed=0).eval()
    z = torch.randn(16, 4)
    out = ev(z)
    T = dag.evaluate(torch.rand(16, 3) < 0.5)
    for i in dag.operator_nodes:
        feats = [out.node_feats[:, c] for c in dag.children[i]]
        u_train, _ = _node_examples('same_image', feats, [T[:, c] for c in dag.children[i]], dag.op[i], dag.negated[i],
                                    T[:, i], T[:, dag.roots].all(1), 'cyclic', 0.1, None)
        u_pred = ev.node_input([out.node_feats[:, j] for j in range(dag.num_nodes)], i)
        assert torch.equal(u_train, u_pred)
        ident = chimera_batch(feats, [T[:, c] for c in dag.children[i]], dag.op[i], dag.negated[i],
                              perms=[torch.arange(16)] * (len(feats) - 1))
        assert torch.equal(ident.features, u_pred)
        assert torch.allclose(ev.gate(i)(u_train)[1].sigmoid(), out.node_probs[:, i])


def test_ad_strict_has_same_image_positives_and_chimera_negatives_only():
    dag = compile_rules({'r': 'A -> B'})
    F, B = 3, 64
    z = torch.randn(B, F)
    c = torch.rand(B, 2) < 0.5
    c[:, 1] |= c[:, 0]
    T = dag.evaluate(c)
    i = dag.roots[0]
    ch = dag.children[i]
    u, y = _node_examples('ad_strict', [z, z], [T[:, k] for k in ch], 'implies', dag.negated[i], T[:, i],
                          T[:, dag.roots].all(1), 'cyclic', 0.1, torch.Generator().manual_seed(0))
    same_halves = (u[:, :F] == u[:, F + 1:2 * F + 1]).all(1)
    assert torch.equal(same_halves, y == 1)  # the identical-halves shortcut of spec §5.8 is available
    for mode, want_pos_chimera in [('chimera', True), ('chimera_plus_true', True)]:
        u2, y2 = _node_examples(mode, [z, z], [T[:, k] for k in ch], 'implies', dag.negated[i], T[:, i],
                                T[:, dag.roots].all(1), 'cyclic', 0.1, torch.Generator().manual_seed(0))
        assert ((~(u2[:, :F] == u2[:, F + 1:2 * F + 1]).all(1)) & (y2 == 1)).any() == want_pos_chimera


def test_unknown_mode_rejected():
    dag = compile_rules(['A -> B'])
    with pytest.raises(ValueError, match='mode must be one of'):
        train_evaluator(RuleEvaluator(dag, 2), torch.randn(8, 2), torch.ones(8, 2), mode='legacy', device='cpu')


def test_levelwise_freezing_and_frozen_leaf_bank():
    toy = make_chimera_toy(n_train=1200, n_normal=10, n_per_rule=5, seed=0)
    bank = fit_leaf_bank(LeafBank(6, 26), toy.x_train, toy.c_train, epochs=1, seed=0, device='cpu')
    z, _ = bank.transform(toy.x_train)
    bank_hash, z_copy = _hash(bank), z.clone()
    dag = toy.dag
    snaps = {}

    def cb(level, ev):
        snaps[level] = {i: _hash(ev.gate(i)) for i in dag.operator_nodes}
    ev = RuleEvaluator(dag, 26, seed=0)
    init = {i: _hash(ev.gate(i)) for i in dag.operator_nodes}
    train_evaluator(ev, z, toy.c_train, mode='chimera', epochs_per_level=1, seed=0, device='cpu', callback=cb)
    lvl1, lvl2 = dag.levels[1], dag.levels[2]
    for i in lvl1:  # level-1 gates trained in level 1, unchanged afterwards
        assert snaps[1][i] != init[i] and snaps[2][i] == snaps[1][i] == _hash(ev.gate(i))
    for i in lvl2:  # level-2 gates untouched during level 1
        assert snaps[1][i] == init[i] and snaps[2][i] != init[i]
    assert _hash(bank) == bank_hash and torch.equal(z, z_copy)


def test_training_is_reproducible():
    toy = make_chimera_toy(n_train=600, n_normal=10, n_per_rule=5, seed=1)
    hs = []
    for _ in range(2):
        ev = RuleEvaluator(toy.dag, 26, seed=4)
        train_evaluator(ev, toy.x_train, toy.c_train, mode='chimera_plus_true', epochs_per_level=1, seed=7, device='cpu')
        hs.append(_hash(ev))
    assert hs[0] == hs[1]


def _random_formula(rng, depth, vars_):
    if depth == 0 or rng.random() < 0.25:
        return rng.choice(vars_)
    op = rng.choice(['&', '|', '^', '->', '<->'])
    f = f'({_random_formula(rng, depth - 1, vars_)} {op} {_random_formula(rng, depth - 1, vars_)})'
    return '~' + f if rng.random() < 0.3 else f


def test_independent_events_equals_boolean_truth_at_01():
    import random
    rng = random.Random(0)
    vars_ = ['a', 'b', 'c', 'd']
    dag = compile_rules([_random_formula(rng, 3, vars_) for _ in range(25)], concepts=vars_)
    tt = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64)
    assert torch.equal(independent_events(dag, tt), dag.root_truth(tt.bool()).double())


def test_independent_events_monte_carlo_read_once_and_repeated_variable():
    dag = compile_rules(['(a & ~b) -> (c | d)', 'a <-> ~c', 'a & ~a'], concepts=['a', 'b', 'c', 'd'])
    p = torch.tensor([[0.3, 0.6, 0.2, 0.7]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    samples = torch.rand(n, 4, generator=g, dtype=torch.float64) < p
    freq = dag.root_truth(samples).double().mean(0)
    P = independent_events(dag, p)[0]
    for r in range(2):  # read-once formulas: exact under independence
        assert abs(freq[r] - P[r]) < 3 * math.sqrt(P[r] * (1 - P[r]) / n) + 1e-12
    assert freq[2] == 0 and abs(P[2] - 0.3 * 0.7) < 1e-12  # repeated variable: product semantics is wrong (documented)


def test_aggregates_against_numpy():
    p = torch.rand(20, 4, generator=torch.Generator().manual_seed(0)).double()
    P = p.numpy()
    np.testing.assert_allclose(aggregate_scores(p, 'min').numpy(), 1 - P.min(1))
    np.testing.assert_allclose(aggregate_scores(p, 'mean').numpy(), (1 - P).mean(1))
    np.testing.assert_allclose(aggregate_scores(p, 'geo', eps=0).numpy(), 1 - np.prod(P, 1) ** 0.25)


def test_toy_generator_matches_spec():
    toy = make_chimera_toy(n_train=4000, n_normal=500, n_per_rule=200, seed=0)
    assert toy.x_train.shape == (4000, 26) and toy.x_train.dtype == torch.float32
    assert toy.dag.root_truth(toy.c_train).all()
    rt = toy.rule_truth_test()
    assert rt[toy.test_group == -1].all()
    for r in range(toy.dag.num_rules):
        assert (~rt[toy.test_group == r, r]).all()
    strong = make_chimera_toy(n_train=4000, n_normal=0, n_per_rule=0, snr_obj=2.0, seed=0)
    # a linear probe reads object concepts much better with the strong-perception knob (spec §12.3.6)
    from sklearn.linear_model import LogisticRegression
    for data, lo, hi in [(toy, 0.70, 0.86), (strong, 0.97, 1.0)]:
        clf = LogisticRegression(max_iter=500).fit(data.x_train[:3000].numpy(), data.c_train[:3000, 0].numpy())
        auc = roc_auc_score(data.c_train[3000:, 0].numpy(), clf.predict_proba(data.x_train[3000:].numpy())[:, 1])
        assert lo <= auc <= hi, auc
    with pytest.raises(ValueError, match='variants'):
        make_chimera_toy(n_train=10, variants=['nope'])
    chain = make_chimera_toy(n_train=100, n_normal=10, n_per_rule=10, variants=['chain', 'shared', 'rare_antecedent'])
    assert 'chain' in chain.dag.rule_names and 'shared' in chain.dag.rule_names


def test_end_to_end_chimera_beats_baselines_on_relational_rule():
    toy = make_chimera_toy(n_train=8000, n_normal=600, n_per_rule=200, seed=0)
    bank = fit_leaf_bank(LeafBank(6, 26), toy.x_train, toy.c_train, epochs=4, lr=1e-2, seed=0, device='cpu')
    z_tr, _ = bank.transform(toy.x_train)
    z_te, p_te = bank.transform(toy.x_test)
    lab = (~toy.rule_truth_test()).numpy()
    r5 = toy.dag.rule_names.index('R5')
    ev = RuleEvaluator(toy.dag, 26, seed=0)
    train_evaluator(ev, z_tr, toy.c_train, mode='chimera', epochs_per_level=4, seed=0, device='cpu')
    out = ev.predict(z_te, p_te)
    auc_chim = roc_auc_score(lab[:, r5], 1 - out.rule_probs[:, r5].numpy())
    auc_ind = roc_auc_score(lab[:, r5], 1 - independent_events(toy.dag, p_te)[:, r5].numpy())
    assert auc_chim > auc_ind + 0.1, (auc_chim, auc_ind)
    # attribution: on samples violating exactly one rule, the top rule is the violated one far above chance
    single = lab.sum(1) == 1
    at = attribute(toy.dag, out.node_probs, np.nonzero(single)[0])
    acc = (at.rule_index.to_numpy() == lab[single].argmax(1)).mean()
    assert acc > 2.0 / toy.dag.num_rules, acc


def test_monolithic_chimera_beats_monolithic_same_image():
    toy = make_chimera_toy(n_train=6000, n_normal=400, n_per_rule=150, seed=2)
    lab = (~toy.rule_truth_test()).numpy()
    aucs = {}
    for mode in ['same_image', 'chimera']:
        m = train_monolithic(MonolithicEvaluator(toy.dag, 26, seed=0), toy.x_train, toy.c_train, mode=mode, epochs=6, batch_size=128,
                             seed=0, device='cpu')
        P = m.predict(toy.x_test)
        assert P.shape == (len(toy.x_test), toy.dag.num_rules)
        aucs[mode] = np.mean([roc_auc_score(lab[:, r], 1 - P[:, r].numpy()) for r in range(toy.dag.num_rules)])
    assert aucs['chimera'] > aucs['same_image'] + 0.05, aucs
    with pytest.raises(ValueError, match='monolithic'):
        train_monolithic(MonolithicEvaluator(toy.dag, 26), toy.x_train, toy.c_train, mode='ad_strict', device='cpu')


def test_joint_schedule_and_learned_aggregator():
    from hyperlatent.chimera import LearnedAggregator
    g = torch.Generator().manual_seed(0)
    c = torch.rand(3000, 2, generator=g) < 0.5
    c[:, 1] |= c[:, 0]
    z = torch.cat([c.float() * 2 - 1 + 0.3 * torch.randn(3000, 2, generator=g), torch.randn(3000, 2, generator=g)], 1)
    cv = torch.tensor([[True, False]] * 200 + [[False, True]] * 200)
    zv = torch.cat([cv.float() * 2 - 1 + 0.3 * torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)], 1)
    dag = compile_rules({'r': 'A -> B', 's': 'A & B -> B'})  # 's' is a tautology: never violated
    ev = RuleEvaluator(dag, 4, seed=0)
    res = train_evaluator(ev, z, c, mode='chimera', schedule='joint', epochs_per_level=4, batch_size=64, seed=0, device='cpu')
    assert set(res.history.node) == set(dag.operator_nodes)
    P = ev.predict(zv).rule_probs
    y = ~dag.root_truth(cv)[:, 0]
    assert roc_auc_score(y.numpy(), 1 - P[:, 0].numpy()) > 0.95
    agg = LearnedAggregator().fit(P, y)
    assert roc_auc_score(y.numpy(), aggregate_scores(P, 'learned', agg).numpy()) > 0.95
    with pytest.raises(ValueError, match='both classes'):
        LearnedAggregator().fit(P, torch.zeros(400, dtype=torch.bool))


def test_gate_cache_keys_and_frozen_nodes(tmp_path):
    from hyperlatent.chimera import GateCache, encoder_fingerprint, gate_cache_key
    dag = compile_rules(['(A | ~B) -> C', '(~B | A) -> C', 'C -> (A | ~B)', '(A | B) -> C'])
    k = [gate_cache_key(dag, r, 4, 'fp') for r in dag.roots]
    assert k[0] == k[1]  # same node after hash-consing, and keys ignore commutative child order
    assert len({k[0], k[2], k[3]}) == 3  # implies order and negation marks matter
    assert gate_cache_key(dag, dag.roots[0], 5, 'fp') != k[0] and gate_cache_key(dag, dag.roots[0], 4, 'other') != k[0]
    bank = LeafBank(3, 4)
    fp = encoder_fingerprint(bank)
    assert fp == encoder_fingerprint(bank)
    with torch.no_grad():
        bank.heads.weight[0, 0] += 1
    assert encoder_fingerprint(bank) != fp
    # trained gates reused through the cache are left untouched when passed as frozen_nodes
    c = torch.rand(500, 3) < 0.5
    z = torch.randn(500, 4)
    ev = RuleEvaluator(dag, 4, seed=0)
    train_evaluator(ev, z, c, mode='chimera', epochs_per_level=1, device='cpu', progress=False)
    cache = GateCache(tmp_path)
    cache.save(ev, fp, tag='chimera')
    ev2 = RuleEvaluator(dag, 4, seed=1)
    loaded = cache.load(ev2, fp, tag='chimera')
    assert loaded == sorted(dag.operator_nodes)
    assert cache.load(RuleEvaluator(dag, 4), fp, tag='same_image') == []
    lvl1 = [i for i in dag.levels[1]]
    before = {i: _hash(ev2.gate(i)) for i in dag.operator_nodes}
    train_evaluator(ev2, z, c, mode='chimera', epochs_per_level=1, device='cpu', progress=False, frozen_nodes=lvl1)
    assert all(_hash(ev2.gate(i)) == before[i] for i in lvl1)
    assert all(_hash(ev2.gate(i)) != before[i] for i in dag.levels[2])


# ----------------------------------------------------------------------------------------------- load_concept_data
def _concept_folder(d, csv_text, rules='r1: a -> b\n', n=None):
    import numpy as np
    d.mkdir(parents=True, exist_ok=True)
    (d / 'concepts.csv').write_text(csv_text)
    rows = csv_text.strip().count('\n')
    np.save(d / 'features.npy', np.arange(2 * rows, dtype=np.float32).reshape(rows, 2))
    if rules is not None:
        (d / 'rules.txt').write_text(rules)
    return d


def test_load_concept_data_rejects_non_boolean_labels(tmp_path):
    from hyperlatent.chimera import load_concept_data
    ok = _concept_folder(tmp_path / 'ok', 'id,split,a,b\n0,train,1,1\n1,test,True,false\n2,test,0,FALSE\n')
    cd = load_concept_data(ok)
    assert cd.c_test.tolist() == [[True, False], [False, False]]
    for bad in ('0.6', '2', '-1', '', 'yes'):
        d = _concept_folder(tmp_path / f'bad{bad}', f'id,split,a,b\n0,train,1,1\n1,test,{bad},0\n')
        with pytest.raises(ValueError, match=r"concepts\.csv.*'a'"):
            load_concept_data(d)


def test_load_concept_data_split_names(tmp_path):
    from hyperlatent.chimera import load_concept_data
    d = _concept_folder(tmp_path / 'cap', 'id,split,a,b\n0,Train,1,1\n1,TRAIN,1,1\n2,test,1,0\n3, Test ,0,0\n')
    cd = load_concept_data(d)
    assert len(cd.x_train) == 2 and len(cd.x_test) == 2  # 'Train' is train, not test
    assert cd.x_train[:, 0].tolist() == [0.0, 2.0] and cd.x_test[:, 0].tolist() == [4.0, 6.0]
    for bad in ('val', 'training', ''):
        d = _concept_folder(tmp_path / f's{bad}', f'id,split,a,b\n0,train,1,1\n1,{bad},1,0\n')
        with pytest.raises(ValueError, match='split'):
            load_concept_data(d)


def test_load_concept_data_duplicate_rule_name(tmp_path):
    from hyperlatent.chimera import load_concept_data
    d = _concept_folder(tmp_path / 'dup', 'id,split,a,b\n0,train,1,1\n1,test,1,0\n', rules='r1: a -> b\nr1: b -> a\n')
    with pytest.raises(ValueError, match=r"rules\.txt.*'r1'"):
        load_concept_data(d)


def test_load_concept_data_images_use_data_decoder(tmp_path):
    from PIL import Image
    from hyperlatent.chimera import load_concept_data
    from hyperlatent.data import CorruptDatasetError, _decode
    d = tmp_path / 'img'
    (d / 'images').mkdir(parents=True)
    (d / 'concepts.csv').write_text('id,split,a,b\n0,train,1,1\n1,test,1,0\n')
    (d / 'rules.txt').write_text('r1: a -> b\n')
    wide = np.zeros((4, 12, 3), np.uint8)
    wide[:, 4:8] = (0, 255, 0)
    Image.fromarray(wide).save(d / 'images' / '0.png')
    Image.fromarray(np.full((6, 6, 3), 30, np.uint8)).save(d / 'images' / '1.png')
    cd = load_concept_data(d, image_size=4)
    assert cd.x_train.shape == (1, 3, 4, 4)
    assert torch.allclose(cd.x_train[0], torch.tensor([0., 1., 0.]).view(3, 1, 1).expand(3, 4, 4), atol=1 / 255)  # centre crop
    assert torch.equal(cd.x_test[0], torch.from_numpy(np.array(_decode(d / 'images' / '1.png', 'RGB', 4))).float() / 255)
    (d / 'images' / '1.png').write_bytes(b'not a png')
    with pytest.raises(CorruptDatasetError, match='1.png'):
        load_concept_data(d, image_size=4)


def test_default_device_delegates_to_select_device():
    from hyperlatent._checks import select_device
    from hyperlatent.chimera import default_device
    assert default_device() == select_device()
    assert default_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match='device'):
        default_device('no-such-device')


# --- the shared operator table and the split training loop -------------------------------------------------
def test_independent_events_is_the_operator_table_propagation():
    from hyperlatent.rules import CONNECTIVES, propagate
    dag = compile_rules(['(a & b & ~c) | d', 'a -> (b <-> d)', '~(a ^ c)'], concepts=['a', 'b', 'c', 'd'], flatten=True)
    p = torch.rand(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    roots, nodes = independent_events(dag, p, return_nodes=True)
    assert torch.equal(nodes, propagate(dag, p, kind='prob')) and torch.equal(roots, nodes[:, dag.roots])
    # oracle: every node from its children with the table's probability forms, written out node by node
    for i in dag.operator_nodes:
        v = [1 - nodes[:, c] if g else nodes[:, c] for c, g in zip(dag.children[i], dag.negated[i])]
        torch.testing.assert_close(nodes[:, i], CONNECTIVES[dag.op[i]].prob(*v), rtol=0, atol=1e-12)
    # read-once rules: exact enumeration over the 16 concept assignments
    tt = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.bool)
    truth = dag.root_truth(tt).double()  # (16, R)
    w = torch.where(tt[None], p[:, None], 1 - p[:, None]).prod(-1)  # (64, 16) weights of each assignment
    torch.testing.assert_close(roots, w @ truth, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        independent_events(dag, torch.full((1, 4), 1.5))
    with pytest.raises(ValueError, match='shape'):
        independent_events(dag, torch.rand(2, 3))


def test_train_evaluator_history_rows_and_callbacks_per_schedule():
    toy = make_chimera_toy(n_train=300, n_normal=5, n_per_rule=2, variants=('chain',), seed=2)
    dag = toy.dag
    for schedule, want_calls in (('levelwise', list(range(1, dag.max_depth + 1))),
                                 ('joint', list(range(2 * dag.max_depth)))):
        calls = []
        r = train_evaluator(RuleEvaluator(dag, 26, seed=0), toy.x_train, toy.c_train, epochs_per_level=2, batch_size=100,
                            schedule=schedule, device='cpu', progress=False, callback=lambda l, e: calls.append(l))
        assert calls == want_calls
        h = r.history
        n_epochs = 2 if schedule == 'levelwise' else 2 * dag.max_depth
        assert len(h) == n_epochs * len(dag.operator_nodes)
        assert (h.level == [dag.depth[i] for i in h.node]).all() and (h.examples > 0).all()
        assert sorted(set(h.node)) == sorted(dag.operator_nodes)


def test_train_evaluator_rejects_bad_options():
    dag = compile_rules(['A -> B'])
    ev, z, c = RuleEvaluator(dag, 2), torch.randn(8, 2), torch.ones(8, 2)
    for kw, msg in ((dict(schedule='random'), 'schedule'), (dict(pairing='greedy'), 'pairing'),
                    (dict(batch_size=1), 'batch_size'), (dict(epochs_per_level=0), 'epochs_per_level'),
                    (dict(frozen_nodes=[dag.leaf_nodes[0]]), 'frozen_nodes')):
        with pytest.raises(ValueError, match=msg):
            train_evaluator(ev, z, c, device='cpu', progress=False, **kw)
    with pytest.raises(ValueError, match='z must have shape'):
        train_evaluator(ev, torch.randn(8, 3), c, device='cpu', progress=False)
