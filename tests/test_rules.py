"""Tests of hyperlatent.rules against independent oracles: SymPy, a direct recursive evaluator, truth tables."""
import itertools
import math
import random

import numpy as np
import pytest
import sympy
import torch
from sympy.logic.boolalg import And, Equivalent, Implies, Not as SNot, Or, Xor

from hyperlatent.rules import (CONNECTIVES, OPERATORS, Binary, Not, RuleDAG, RuleSyntaxError, Var, apply_operator,
                               apply_probability, compile_rules, connective, parse_rule, plot_dag, propagate,
                               render_dot, render_formula, render_text, root_truth)

VARS = ['a', 'b', 'c', 'd', 'e', 'f']
SYMS = {v: sympy.Symbol(v) for v in VARS}
OPS = ['and', 'or', 'xor', 'implies', 'iff']


def random_formula(rng: random.Random, depth: int, vars_=VARS):
    "Random formula with repeated variables, random NOTs (including double NOT and NOT at the root)."
    if depth == 0 or rng.random() < 0.2:
        f = Var(rng.choice(vars_))
    else:
        f = Binary(rng.choice(OPS), random_formula(rng, depth - 1, vars_), random_formula(rng, depth - 1, vars_))
    for _ in range(rng.choice([0, 0, 1, 2])):
        f = Not(f)
    return f


def to_sympy(f):
    if isinstance(f, Var): return SYMS[f.name]
    if isinstance(f, Not): return SNot(to_sympy(f.arg))
    l, r = to_sympy(f.left), to_sympy(f.right)
    return {'and': And, 'or': Or, 'xor': Xor, 'implies': Implies, 'iff': Equivalent}[f.op](l, r)


def recursive_eval(f, env):
    "A direct recursive Python evaluator (second oracle)."
    if isinstance(f, Var): return env[f.name]
    if isinstance(f, Not): return not recursive_eval(f.arg, env)
    l, r = recursive_eval(f.left, env), recursive_eval(f.right, env)
    return {'and': l and r, 'or': l or r, 'xor': l != r, 'implies': (not l) or r, 'iff': l == r}[f.op]


def all_assignments(k):
    return np.array(list(itertools.product([False, True], repeat=k)), dtype=bool)


def test_operator_truth_tables_every_negation_pattern():
    tt = all_assignments(2)
    a, b = tt[:, 0], tt[:, 1]
    ref = {'&': lambda x, y: x & y, '|': lambda x, y: x | y, '^': lambda x, y: x ^ y,
           '->': lambda x, y: ~x | y, '<->': lambda x, y: x == y}
    for sym, fn in ref.items():
        for na, nb, nroot in itertools.product([0, 1], repeat=3):
            text = ('~' * nroot) + '(' + ('~' * na) + 'a ' + sym + ' ' + ('~' * nb) + 'b)'
            dag = compile_rules([text], concepts=['a', 'b'])
            x = ~a if na else a
            y = ~b if nb else b
            want = fn(x, y)
            want = ~want if nroot else want
            np.testing.assert_array_equal(dag.root_truth(tt)[:, 0], want, err_msg=text)


def test_iff_nary_means_all_equal_and_implies_arity():
    dag = RuleDAG(['a', 'b', 'c'], ['leaf', 'leaf', 'leaf', 'iff'], [(), (), (), (0, 1, 2)],
                  [(), (), (), (False, False, False)], [0, 1, 2, -1], [3])
    tt = all_assignments(3)
    np.testing.assert_array_equal(dag.root_truth(tt)[:, 0], (tt[:, 0] == tt[:, 1]) & (tt[:, 1] == tt[:, 2]))
    with pytest.raises(ValueError, match='exactly 2'):
        RuleDAG(['a', 'b', 'c'], ['leaf', 'leaf', 'leaf', 'implies'], [(), (), (), (0, 1, 2)],
                [(), (), (), (False,) * 3], [0, 1, 2, -1], [3])


def test_implies_keeps_operand_order():
    tt = np.array([[True, False], [False, True]])
    ab = compile_rules(['a -> b'], concepts=['a', 'b']).root_truth(tt)[:, 0]
    ba = compile_rules(['b -> a'], concepts=['a', 'b']).root_truth(tt)[:, 0]
    np.testing.assert_array_equal(ab, [False, True])
    np.testing.assert_array_equal(ba, [True, False])
    # swapping children of a hand-built implies node changes the result on (1, 0)
    mk = lambda ch: RuleDAG(['a', 'b'], ['leaf', 'leaf', 'implies'], [(), (), ch], [(), (), (0, 0)], [0, 1, -1], [2])
    assert mk((0, 1)).root_truth(tt)[0, 0] != mk((1, 0)).root_truth(tt)[0, 0]


@pytest.mark.parametrize('seed', range(4))
def test_random_formulas_match_sympy_and_recursive_evaluator(seed):
    rng = random.Random(seed)
    formulas = [random_formula(rng, rng.randint(1, 4)) for _ in range(40)]
    dag = compile_rules(formulas, concepts=VARS)  # all rules in one DAG: exercises cross-rule sharing
    tt = all_assignments(len(VARS))
    got = dag.root_truth(tt)
    np.testing.assert_array_equal(compile_rules(formulas, concepts=VARS, flatten=True).root_truth(tt), got)
    for j, f in enumerate(formulas):
        expr = to_sympy(f)
        # SymPy truth over all 2^6 assignments
        want = np.array([bool(expr.subs({SYMS[v]: bool(x) for v, x in zip(VARS, row)})) for row in tt])
        np.testing.assert_array_equal(got[:, j], want, err_msg=str(f))
        want2 = np.array([recursive_eval(f, dict(zip(VARS, row))) for row in tt])
        np.testing.assert_array_equal(got[:, j], want2, err_msg=str(f))
        # the printed formula re-parses to the same truth table
        again = compile_rules([str(f)], concepts=VARS).root_truth(tt)[:, 0]
        np.testing.assert_array_equal(again, want)


def test_every_node_formula_matches_sympy():
    rng = random.Random(11)
    formulas = [random_formula(rng, 4) for _ in range(15)]
    dag = compile_rules(formulas, concepts=VARS)
    tt = all_assignments(len(VARS))
    nodes = dag.evaluate(tt)
    for i in range(dag.num_nodes):
        expr = to_sympy(parse_rule(dag.formula(i)))
        want = np.array([bool(expr.subs({SYMS[v]: bool(x) for v, x in zip(VARS, row)})) for row in tt])
        np.testing.assert_array_equal(nodes[:, i], want, err_msg=dag.formula(i))


def _canon(f, keys):
    "Independent normaliser: (key, negated) of a subformula; records every node key in `keys`."
    if isinstance(f, Var):
        keys.add(f.name)
        return f.name, False
    if isinstance(f, Not):
        k, g = _canon(f.arg, keys)
        return k, not g
    (kl, gl), (kr, gr) = _canon(f.left, keys), _canon(f.right, keys)
    op = f.op
    if op == 'xor':
        op, gr = 'iff', not gr
    parts = [('~' if gl else '') + kl, ('~' if gr else '') + kr]
    if op != 'implies':
        parts.sort()
    key = op + '(' + ','.join(parts) + ')'
    keys.add(key)
    return key, False


def test_sharing_invariance_and_node_count():
    # (a -> b) & (b -> c) twice, once per rule, plus its parts as rules of their own: nodes are shared
    rules = ['(a -> b) & (b -> c)', 'a -> b', '(b -> c) & (a -> b)', '~~(a -> b)']
    dag = compile_rules(rules)
    # distinct subformulas: leaves a, b, c; a->b; b->c; and(...)  (commutative and ordered canonically)
    assert dag.num_nodes == 6
    assert dag.roots[0] == dag.roots[2] and dag.roots[1] == dag.roots[3]
    # sharing changes nothing: the per-rule compiled trees give identical rule truths
    tt = all_assignments(3)
    shared = dag.root_truth(tt)
    separate = np.stack([compile_rules([r], concepts=dag.concepts).root_truth(tt)[:, 0] for r in rules], 1)
    np.testing.assert_array_equal(shared, separate)


def test_node_count_equals_distinct_subformulas_random():
    rng = random.Random(5)
    for _ in range(30):
        f = random_formula(rng, 4, vars_=['a', 'b', 'c'])
        while isinstance(f, Not):  # root negation / literal roots add rewritten nodes; tested elsewhere
            f = f.arg
        if isinstance(f, Var):
            continue
        keys = set()
        _canon(f, keys)
        assert compile_rules([f]).num_nodes == len(keys), str(f)


def test_evaluate_tensor_dict_and_dtype():
    dag = compile_rules({'r': 'a & ~b'})
    t = torch.tensor([[1, 0], [1, 1]])
    out = dag.root_truth(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    assert out[:, 0].tolist() == [True, False]
    assert dag.root_truth({'a': np.array([1, 1]), 'b': np.array([0, 1])})[:, 0].tolist() == [True, False]
    with pytest.raises(ValueError, match='missing'):
        dag.root_truth({'a': np.array([1])})
    with pytest.raises(ValueError, match='0/1'):
        dag.root_truth(np.array([[0.5, 1.0]]))


def test_syntax_errors_show_caret():
    with pytest.raises(RuleSyntaxError) as ei:
        parse_rule('a -> (b & )')
    lines = str(ei.value).splitlines()
    assert lines[1].strip() == 'a -> (b & )'
    assert lines[2].index('^') - lines[1].index('a') == ei.value.pos == 10
    for bad in ['a &', '-> a', 'a b', '()', 'a | | b', '"unterminated']:
        with pytest.raises(ValueError):
            parse_rule(bad)


def test_invalid_dags():
    with pytest.raises(ValueError, match='cycle'):
        RuleDAG(['a'], ['leaf', 'or', 'or'], [(), (0, 2), (0, 1)], [(), (0, 0), (0, 0)], [0, -1, -1], [1])
    with pytest.raises(ValueError, match='concept'):
        RuleDAG(['a'], ['leaf', 'id'], [(), (0,)], [(), (0,)], [-1, -1], [1])
    with pytest.raises(ValueError, match='no children'):
        RuleDAG(['a'], ['leaf', 'or'], [(), ()], [(), ()], [0, -1], [1])
    with pytest.raises(ValueError, match='duplicate'):
        compile_rules([('x', 'a'), ('x', 'b')])


def test_torch_path_equals_numpy_path():
    rng = random.Random(3)
    dag = compile_rules([random_formula(rng, 4) for _ in range(30)], concepts=VARS, flatten=True)
    t = torch.from_numpy(np.random.default_rng(0).random((500, len(VARS))) < 0.5)
    assert torch.equal(dag._propagate_torch(t), dag.evaluate(t))


# --- long and deep rules: no recursion anywhere (parse, compile, str/repr/==/hash, formula, propagation) ----
N_BIG = 10_000


def _right_implies(x):
    "Oracle: a -> (b -> (c -> ...)) by a simple loop from the right, for each row of x."
    v = x[:, -1].copy()
    for i in range(x.shape[1] - 2, -1, -1):
        v = ~x[:, i] | v
    return v


def _rows(n, rng):
    "Boolean assignments: random p=0.5, all True, all True but one False, and mostly True (p = 1 - 1/n)."
    x = np.ones((6, n), bool)
    x[0] = rng.random(n) < 0.5
    x[2, rng.integers(n)] = False
    x[3, -1] = False
    x[4] = rng.random(n) < 1 - 1 / n
    x[5, 0] = False
    return x


def test_reported_recursion_errors_are_gone():
    assert parse_rule('(' * 90 + 'A' + ')' * 90) == Var('A')
    chain = parse_rule(' -> '.join(f'A{i}' for i in range(992)))
    want = Var('A991')
    for i in range(990, -1, -1): want = Binary('implies', Var(f'A{i}'), want)  # built bottom-up, no parser
    assert chain == want
    dag = compile_rules([' & '.join(f'A{i}' for i in range(1002))])
    assert dag.num_nodes == 1002 + 1001
    f = Var('A0')
    for i in range(1, 2000): f = f & Var(f'A{i}')
    assert parse_rule(str(f)) == f


@pytest.mark.parametrize('op', ['&', '|'])
def test_long_and_or_chains_match_all_any(op):
    rng = np.random.default_rng(0)
    text = f' {op} '.join(f'A{i}' for i in range(N_BIG))
    f = parse_rule(text)
    ref = Var('A0')
    for i in range(1, N_BIG): ref = Binary('and' if op == '&' else 'or', ref, Var(f'A{i}'))  # left-assoc
    assert f == ref and hash(f) == hash(ref)
    assert parse_rule(str(f)) == f
    assert f.variables() == [f'A{i}' for i in range(N_BIG)]
    x = _rows(N_BIG, rng)
    want = x.all(1) if op == '&' else x.any(1)
    if op == '|': x = ~x; want = x.any(1)  # make 'or' non-trivial: mostly-False rows
    for flatten in (False, True):
        dag = compile_rules({'r': text}, flatten=flatten)
        np.testing.assert_array_equal(dag.root_truth(x)[:, 0], want)
        d = {f'A{i}': x[:, i] for i in range(N_BIG)}
        np.testing.assert_array_equal(dag.root_truth(d)[:, 0], want)
    # the DAG's own rendering re-parses to a rule with the same truth
    dag = compile_rules({'r': text})
    np.testing.assert_array_equal(compile_rules([dag.formula(dag.roots[0])], concepts=dag.concepts).root_truth(x)[:, 0], want)


def test_long_implies_chain_is_right_associative():
    rng = np.random.default_rng(1)
    text = ' -> '.join(f'A{i}' for i in range(N_BIG))
    f = parse_rule(text)
    ref = Var(f'A{N_BIG - 1}')
    for i in range(N_BIG - 2, -1, -1): ref = Binary('implies', Var(f'A{i}'), ref)
    assert f == ref and parse_rule(str(f)) == f
    dag = compile_rules([text])
    x = _rows(N_BIG, rng)
    x[1] = True; x[1, -1] = False; x[1, ::2] = True  # chain: every antecedent true, final consequent false
    x = np.concatenate([x, rng.random((20, N_BIG)) < 0.9])
    want = _right_implies(x)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(dag.root_truth(x)[:, 0], want)
    np.testing.assert_array_equal(dag.root_truth(torch.from_numpy(x))[:, 0].numpy(), want)


def test_deep_parentheses_and_negations():
    assert parse_rule('(' * N_BIG + 'A' + ')' * N_BIG) == Var('A')
    assert parse_rule('(' * N_BIG + 'A -> B' + ')' * N_BIG) == Var('A') >> Var('B')
    for n in (N_BIG, N_BIG + 1):
        f = parse_rule('~(' * n + 'A' + ')' * n)
        g = Var('A')
        for _ in range(n): g = Not(g)
        assert f == g and parse_rule(str(f)) == f and repr(f).count('Not(') == n
        a = np.array([[False], [True]])
        np.testing.assert_array_equal(compile_rules([f]).root_truth(a)[:, 0], a[:, 0] ^ (n % 2 == 1))
    with pytest.raises(RuleSyntaxError, match=r"expected '\)'"):
        parse_rule('(' * N_BIG + 'A' + ')' * (N_BIG - 1))


def test_deep_right_nested_mixed_formula_matches_loop_oracle():
    "A0 & (A1 | (A2 ^ (A3 -> (A4 <-> (... ~A_{n-1}))))): 10,000 levels deep; oracle folds from the inside out."
    rng = np.random.default_rng(2)
    n = N_BIG
    syms = ['&', '|', '^', '->', '<->']
    fns = [lambda a, b: a & b, lambda a, b: a | b, lambda a, b: a ^ b, lambda a, b: ~a | b, lambda a, b: a == b]
    ops = rng.integers(0, 5, n - 1)
    neg = rng.random(n) < 0.3
    lit = [('~' if neg[i] else '') + f'A{i}' for i in range(n)]
    text = ''.join(f'{lit[i]} {syms[ops[i]]} (' for i in range(n - 1)) + lit[-1] + ')' * (n - 1)
    f = parse_rule(text)
    assert parse_rule(str(f)) == f
    dag = compile_rules([text])
    assert dag.max_depth >= n - 1
    x = rng.random((64, n)) < 0.5
    xl = x ^ neg
    want = xl[:, -1]
    for i in range(n - 2, -1, -1):
        want = fns[ops[i]](xl[:, i], want)
    np.testing.assert_array_equal(dag.root_truth(x)[:, 0], want)
    nodes = dag.evaluate(x)
    np.testing.assert_array_equal(nodes[:, dag.roots[0]], want)
    back = compile_rules([dag.formula(dag.roots[0])], concepts=dag.concepts)
    np.testing.assert_array_equal(back.root_truth(x)[:, 0], want)


_PREC = {'iff': 1, 'implies': 2, 'or': 3, 'xor': 4, 'and': 5}
_SPELL = {'and': ['&', 'and'], 'or': ['|', 'or'], 'xor': ['^', 'xor'], 'implies': ['->', 'implies'], 'iff': ['<->', 'iff']}


def minimal_text(f, rng):
    "Independent printer using the fewest parentheses the precedence table allows (random spellings)."
    if isinstance(f, Var): return f.name
    if isinstance(f, Not):
        s = minimal_text(f.arg, rng)
        return rng.choice(['~', '!', 'not ']) + (f'({s})' if isinstance(f.arg, Binary) else s)
    p = _PREC[f.op]
    def side(c, left):
        s = minimal_text(c, rng)
        if not isinstance(c, Binary): return s
        q = _PREC[c.op]
        need = q < p or (q == p and (left if f.op == 'implies' else not left))
        return f'({s})' if need else s
    return f'{side(f.left, True)} {rng.choice(_SPELL[f.op])} {side(f.right, False)}'


@pytest.mark.parametrize('seed', range(5))
def test_precedence_parser_agrees_with_minimal_parenthesis_printer(seed):
    rng = random.Random(seed)
    for _ in range(60):
        f = random_formula(rng, rng.randint(1, 6))
        assert parse_rule(minimal_text(f, rng)) == f


def test_formula_equality_hash_and_pickle():
    import pickle
    a, b = parse_rule('a & ~b -> c'), parse_rule('(a & ~b) -> c')
    assert a == b and hash(a) == hash(b) and not (a != b) and len({a, b}) == 1
    assert a != parse_rule('a & ~b -> d') and a != parse_rule('a & b -> c') and a != 'a & ~b -> c'
    assert pickle.loads(pickle.dumps(a)) == a
    assert repr(Var('x') & ~Var('y')) == "Binary(op='and', left=Var(name='x'), right=Not(arg=Var(name='y')))"


# --- truth values must be Boolean ---------------------------------------------------------------------------
def test_non_boolean_truth_values_are_rejected_naming_the_variable():
    dag = compile_rules({'r': 'a & ~b'})
    with pytest.raises(ValueError, match=r"truth\['a'\].*0/1.*0\.5"):
        dag.root_truth({'a': np.array([1.0, 0.5]), 'b': np.array([0, 1])})
    with pytest.raises(ValueError, match=r"truth\['b'\].*nan"):
        dag.root_truth({'a': np.array([1, 1]), 'b': np.array([0.0, np.nan])})
    with pytest.raises(ValueError, match=r"truth\['b'\]"):
        dag.root_truth({'a': [1, 0], 'b': ['x', 'y']})
    for bad in (2, -1):
        x = np.array([[1, 0], [0, bad]])
        with pytest.raises(ValueError, match=r"column 1 \(concept 'b'\).*0/1"):
            dag.root_truth(x)
        with pytest.raises(ValueError, match=r"concept 'b'"):
            dag.evaluate(torch.from_numpy(x))
        with pytest.raises(ValueError, match=r"truth\['b'\]"):
            dag.root_truth({'a': x[:, 0], 'b': x[:, 1]})
    with pytest.raises(ValueError, match="concept 'a'"):
        dag.root_truth(np.array([[np.nan, 0.0]]))


def test_boolean_like_truth_values_are_accepted():
    dag = compile_rules({'r': 'a & ~b'})
    xb = all_assignments(2)
    want = xb[:, 0] & ~xb[:, 1]
    for x in (xb, xb.astype(np.int64), xb.astype(np.uint8), xb.astype(np.float32), xb.astype(float),
              torch.from_numpy(xb), torch.from_numpy(xb.astype(np.int32)), torch.from_numpy(xb.astype(np.float64))):
        got = dag.root_truth(x)
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_array_equal(got[:, 0], want)
    d = {'a': [np.bool_(v) for v in xb[:, 0]], 'b': [bool(v) for v in xb[:, 1]]}
    np.testing.assert_array_equal(dag.root_truth(d)[:, 0], want)
    np.testing.assert_array_equal(dag.root_truth({'a': xb[:, 0] * 1.0, 'b': xb[:, 1] * 1})[:, 0], want)


def test_index_arguments_use_check_int():
    dag = compile_rules({'r': 'a & b', 's': 'a | c'})
    assert dag.rule_nodes(np.int64(1)) == dag.rule_nodes('s')
    with pytest.raises(TypeError, match='rule'):
        dag.rule_nodes(True)
    with pytest.raises(ValueError, match='rule'):
        dag.rule_nodes(2)
    with pytest.raises(ValueError, match='node'):
        dag.formula(dag.num_nodes)
    with pytest.raises(ValueError, match='node'):
        dag.subtree(-1)
    with pytest.raises(TypeError, match='node'):
        dag.formula(1.0)


@pytest.mark.parametrize('seed', range(3))
def test_flatten_keeps_truth_and_merges_chains(seed):
    rng = random.Random(100 + seed)
    fs = [random_formula(rng, rng.randint(1, 5)) for _ in range(25)]
    x = all_assignments(len(VARS))
    env = [dict(zip(VARS, row)) for row in x.tolist()]
    want = np.array([[recursive_eval(f, e) for f in fs] for e in env])
    flat = compile_rules(fs, concepts=VARS, flatten=True)
    np.testing.assert_array_equal(flat.root_truth(x), want)
    assert flat.num_nodes <= compile_rules(fs, concepts=VARS).num_nodes
    # an un-negated same-operator chain is one node; a negated one is kept apart
    d = compile_rules(['a & (b & (c & d)) & e', '(a | b) | ~(c | d)'], flatten=True)
    assert len(d.children[d.roots[0]]) == 5 and len(d.children[d.roots[1]]) == 3


# --- the operator table: Boolean forms vs truth tables, probability forms vs enumeration and Monte Carlo ------
PY_CONNECTIVES = {'not': lambda a: not a, 'id': lambda a: a, 'and': lambda *b: all(b), 'or': lambda *b: any(b),
                  'xor': lambda a, b: a != b, 'implies': lambda a, b: (not a) or b,
                  'iff': lambda *b: len(set(b)) == 1}


def _arities(c):
    return [c.arity] if c.arity is not None else [1, 2, 3, 5]


def test_table_covers_the_language_and_the_dag_operators():
    assert set(CONNECTIVES) == set(PY_CONNECTIVES)
    assert set(OPERATORS) <= set(CONNECTIVES)
    assert {c.arity for c in CONNECTIVES.values()} == {1, 2, None}


@pytest.mark.parametrize('name', sorted(PY_CONNECTIVES))
def test_connective_truth_equals_truth_table_numpy_and_torch(name):
    c = CONNECTIVES[name]
    for a in _arities(c):
        rows = list(itertools.product([False, True], repeat=a))
        want = np.array([PY_CONNECTIVES[name](*r) for r in rows])
        cols = all_assignments(a).T  # (a, 2^a)
        np.testing.assert_array_equal(c.truth(*cols), want)
        np.testing.assert_array_equal(c.truth(*torch.from_numpy(cols)).numpy(), want)
        for dim in (0, 1):  # apply_operator: operands along any axis
            v = torch.from_numpy(cols if dim == 0 else cols.T.copy())
            np.testing.assert_array_equal(apply_operator(name, v, dim=dim).numpy(), want)


def _enumerated_probability(name, p):
    "Exact P(connective) for independent Bernoulli operands: sum of the weights of the satisfying assignments."
    total = 0.0
    for r in itertools.product([False, True], repeat=len(p)):
        if PY_CONNECTIVES[name](*r):
            total += math.prod(pi if b else 1 - pi for pi, b in zip(p, r))
    return total


@pytest.mark.parametrize('name', sorted(PY_CONNECTIVES))
def test_connective_probability_equals_exact_enumeration(name):
    c = CONNECTIVES[name]
    rng = np.random.default_rng(1)
    for a in _arities(c):
        P = rng.random((200, a))
        P[:5] = rng.integers(0, 2, (5, a))  # include the corners 0/1
        want = np.array([_enumerated_probability(name, row) for row in P])
        np.testing.assert_allclose(c.prob(*P.T), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(apply_probability(name, torch.from_numpy(P)).numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize('name', sorted(PY_CONNECTIVES))
def test_connective_probability_matches_monte_carlo(name):
    c = CONNECTIVES[name]
    g = np.random.default_rng(2)
    n = 100_000
    for a in _arities(c):
        p = g.uniform(0.1, 0.9, a)
        draws = g.random((n, a)) < p  # independent Bernoulli operands
        freq = c.truth(*draws.T).mean()
        want = float(c.prob(*p))
        assert abs(freq - want) <= 5 * math.sqrt(want * (1 - want) / n) + 1e-9, (name, a, freq, want)


def test_connective_lookup_errors():
    with pytest.raises(ValueError, match='unknown operator'):
        connective('nand')
    with pytest.raises(ValueError, match='exactly 2'):
        connective('implies', 3)
    with pytest.raises(ValueError, match='at least 1'):
        connective('and', 0)
    with pytest.raises(ValueError, match='exactly 1'):
        apply_operator('not', torch.ones(4, 2, dtype=torch.bool))


# --- probabilistic propagation -------------------------------------------------------------------------------
def _read_once_formula(rng, vars_):
    "A random formula using each variable at most once (so independence propagation is exact)."
    vs = list(vars_)
    rng.shuffle(vs)
    vs = vs[:rng.randint(1, len(vs))]
    forms = [Not(Var(v)) if rng.random() < 0.3 else Var(v) for v in vs]
    while len(forms) > 1:
        i = rng.randrange(len(forms) - 1)
        f = Binary(rng.choice(OPS), forms[i], forms[i + 1])
        forms[i:i + 2] = [Not(f) if rng.random() < 0.2 else f]
    return forms[0]


@pytest.mark.parametrize('flatten', [False, True])
def test_propagate_prob_exact_for_read_once_formulas_by_enumeration(flatten):
    rng = random.Random(5)
    vars_ = VARS[:5]
    formulas = [_read_once_formula(rng, vars_) for _ in range(30)]
    dag = compile_rules(formulas, concepts=vars_, flatten=flatten)
    p = np.random.default_rng(0).random((4, len(vars_)))
    got = propagate(dag, p, kind='prob')[:, dag.roots]
    for s in range(len(p)):
        for r, f in enumerate(formulas):  # oracle: weights of all 2^5 concept assignments, direct evaluator
            want = sum(math.prod(p[s, k] if x[k] else 1 - p[s, k] for k in range(len(vars_)))
                       for x in all_assignments(len(vars_)) if recursive_eval(f, dict(zip(vars_, x))))
            assert abs(got[s, r] - want) < 1e-12, (str(f), got[s, r], want)


def test_propagate_prob_at_01_equals_boolean_and_types_follow_input():
    rng = random.Random(6)
    dag = compile_rules([random_formula(rng, 4) for _ in range(20)], concepts=VARS, flatten=True)
    x = all_assignments(len(VARS))
    np.testing.assert_array_equal(propagate(dag, x.astype(np.float64), 'prob'), dag.evaluate(x).astype(np.float64))
    out = propagate(dag, torch.from_numpy(x).float(), 'prob')
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert isinstance(propagate(dag, x), np.ndarray) and propagate(dag, x).dtype == bool


def test_propagate_prob_is_differentiable():
    dag = compile_rules(['a & ~b', 'a | b'])
    p = torch.tensor([[0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    P = propagate(dag, p, 'prob')[0, dag.roots]
    assert torch.autograd.gradcheck(lambda q: propagate(dag, q, 'prob')[:, dag.roots], (p,))
    P[0].backward()
    np.testing.assert_allclose(p.grad.numpy(), [[0.4, -0.3]])  # d/da a(1-b) = 1-b, d/db = -a


def test_propagate_rejects_bad_probabilities_and_kinds():
    dag = compile_rules(['a -> b'])
    for bad in (np.array([[0.5, 1.5]]), np.array([[-0.1, 0.5]]), np.array([[np.nan, 0.5]])):
        with pytest.raises(ValueError, match=r'\[0, 1\]'):
            propagate(dag, bad, 'prob')
    with pytest.raises(ValueError, match='shape'):
        propagate(dag, np.zeros((2, 3)), 'prob')
    with pytest.raises(ValueError, match='kind'):
        propagate(dag, np.zeros((2, 2)), 'fuzzy')


# --- the split units: functions and the methods that delegate to them ---------------------------------------
def test_rendering_and_propagation_functions_equal_methods():
    rng = random.Random(8)
    dag = compile_rules([random_formula(rng, 4) for _ in range(10)], concepts=VARS)
    assert render_text(dag) == dag.to_text() == repr(dag)
    assert render_dot(dag) == dag.to_dot()
    assert all(render_formula(dag, i) == dag.formula(i) for i in range(dag.num_nodes))
    x = all_assignments(len(VARS))
    np.testing.assert_array_equal(propagate(dag, x), dag.evaluate(x))
    np.testing.assert_array_equal(root_truth(dag, x), dag.root_truth(x))
    import matplotlib
    matplotlib.use('Agg')
    ax = plot_dag(dag)
    assert len(ax.texts) == dag.num_nodes + sum(map(len, dag.children))  # one label per node, one arrow per edge
    import matplotlib.pyplot as plt
    plt.close('all')
