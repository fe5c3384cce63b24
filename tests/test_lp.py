"""One HiGHS model solved for several objectives gives, objective by objective, exactly what
`scipy.optimize.linprog(method="highs")` gives (status, solution and value, bit for bit), so
the disclosure LPs decide as they did with one linprog call per objective."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import csr_matrix

import replisynth.disclosure.lp as lp_mod
from replisynth.disclosure.lp import LinearProgram


def _table_system(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Margins of a random 3-way count table (equalities) and random two-way functionals
    around their true values (intervals), as in the three-way audit."""
    T = rng.integers(0, 6, size=shape).astype("float64")
    eq, rhs = [], []
    for axis in range(3):
        for v in range(shape[axis]):
            w = np.zeros(shape)
            w[(slice(None),) * axis + (v,)] = 1.0
            eq.append(w.ravel())
            rhs.append(float(T[(slice(None),) * axis + (v,)].sum()))
    ub, ub_rhs = [], []
    for _ in range(3):
        w = rng.normal(size=shape[:2])[:, :, None] * np.ones(shape)
        val = float((w * T).sum())
        ub += [w.ravel(), -w.ravel()]
        ub_rhs += [val + 0.5, -(val - 0.5)]
    return np.asarray(eq), np.asarray(rhs), np.asarray(ub), np.asarray(ub_rhs)


def _same(program: LinearProgram, c: np.ndarray, args: tuple) -> None:
    got = program.minimize(c)
    ref = linprog(c, *args, bounds=(0, None), method="highs")
    assert got.status == ref.status
    if ref.status == 0:
        assert got.x is not None and np.array_equal(got.x, ref.x)
        assert got.fun == ref.fun


@pytest.mark.parametrize("seed", range(8))
def test_each_objective_equals_a_fresh_linprog_call(seed: int) -> None:
    rng = np.random.default_rng(seed)
    A_eq, b_eq, A_ub, b_ub = _table_system(rng, (2 + seed % 3, 3, 2 + seed % 2))
    with_ub = LinearProgram(A_ub, b_ub, A_eq, b_eq)
    without = LinearProgram(None, None, A_eq, b_eq)
    n = A_eq.shape[1]
    objectives = [np.eye(n)[j] * s for j in rng.choice(n, 6, replace=False) for s in (1, -1)]
    objectives += [rng.uniform(-2.0, 2.0, n), np.zeros(n)]
    for c in objectives:
        _same(with_ub, c, (A_ub, b_ub, A_eq, b_eq))
        _same(without, c, (None, None, A_eq, b_eq))


def test_sparse_equalities_and_an_infeasible_system() -> None:
    rng = np.random.default_rng(3)
    A_eq, b_eq, _, _ = _table_system(rng, (3, 3, 2))
    sparse = csr_matrix(A_eq)
    program = LinearProgram(None, None, sparse, b_eq)
    for j in range(A_eq.shape[1]):
        _same(program, np.eye(A_eq.shape[1])[j], (None, None, sparse, b_eq))
    bad = b_eq.copy()
    bad[0] += 1.0  # the margins no longer add up: no table fits
    assert LinearProgram(None, None, A_eq, bad).minimize(np.ones(A_eq.shape[1])).status == 2


def test_without_the_bindings_it_calls_linprog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp_mod, "_highs", lambda: None)
    rng = np.random.default_rng(5)
    A_eq, b_eq, A_ub, b_ub = _table_system(rng, (2, 3, 2))
    program = LinearProgram(A_ub, b_ub, A_eq, b_eq)
    for j in range(A_eq.shape[1]):
        _same(program, -np.eye(A_eq.shape[1])[j], (A_ub, b_ub, A_eq, b_eq))
