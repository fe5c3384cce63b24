"""Many linear programs over one feasible set: min c'x subject to A_ub x <= b_ub, A_eq x = b_eq,
x >= 0, for several objectives c. The HiGHS model and options are built once and each objective
is solved by a new solver instance, so each answer is the one
`scipy.optimize.linprog(method="highs")` gives, bit for bit, without linprog's per-call set-up.
Uses scipy's bundled HiGHS bindings; public `linprog` when they are not there."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

TOL = 1e-9  # linprog's feasibility check of a reported optimum (`_check_result`)


@dataclass(frozen=True)
class LPResult:
    """linprog's status (0 optimal, 1 limit, 2 infeasible, 3 unbounded, 4 other), the solution
    and the objective's value (None unless the model was solved to optimality)."""

    status: int
    x: np.ndarray | None
    fun: float | None


def _highs() -> Any:
    """scipy's HiGHS bindings, or None when this scipy does not ship them."""
    try:
        from scipy.optimize._highspy import _core
    except ImportError:
        return None
    return _core if hasattr(_core, "_Highs") else None


def _sparse(A: Any) -> bool:
    """Whether A is a scipy sparse matrix (none can be while scipy.sparse is not loaded)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(A))


def _csc(A: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column starts, row indices and values of A in compressed sparse column form, as
    `scipy.sparse.csc_array(A)` holds them (a dense A: its nonzeros column by column, rows in
    order, without building a scipy matrix)."""
    if _sparse(A):
        from scipy.sparse import csc_array

        M = csc_array(A)
        return M.indptr, M.indices, M.data
    nz = A.T != 0
    start = np.concatenate(([0], np.cumsum(nz.sum(axis=1)))).astype(np.int32)
    return start, np.nonzero(nz)[1].astype(np.int32), A.T[nz]


def _status(h: Any, model_status: Any) -> int:
    """linprog's status for a HiGHS model status that is not optimal."""
    s = h.HighsModelStatus
    return {
        s.kModelError: 2,
        s.kInfeasible: 2,
        s.kTimeLimit: 1,
        s.kIterationLimit: 1,
        s.kUnbounded: 3,
    }.get(model_status, 4)


class LinearProgram:
    """One feasible set (A_ub dense or None, A_eq dense or sparse), solved for objectives one
    after another."""

    def __init__(
        self,
        A_ub: np.ndarray | None,
        b_ub: np.ndarray | None,
        A_eq: Any,
        b_eq: np.ndarray,
    ) -> None:
        n = A_eq.shape[1]
        self.n = n
        self.A_ub = np.zeros((0, n)) if A_ub is None else np.asarray(A_ub, dtype="float64")
        self.b_ub = np.zeros(0) if b_ub is None else np.asarray(b_ub, dtype="float64")
        self.A_eq = A_eq if _sparse(A_eq) else np.asarray(A_eq, dtype="float64")
        self.b_eq = np.asarray(b_eq, dtype="float64")
        self._h = _highs()
        self._model = self._pass_model() if self._h is not None else None

    def _pass_model(self) -> tuple[Any, Any]:
        """The constraints as a HiGHS model and linprog's options for method "highs"."""
        h, n = self._h, self.n
        if _sparse(self.A_eq):  # as linprog stacks them
            from scipy.sparse import vstack

            A = vstack((self.A_ub, self.A_eq))
        else:
            A = np.vstack((self.A_ub, self.A_eq))
        start, index, value = _csc(A)
        lp = h.HighsLp()
        lp.num_col_ = lp.a_matrix_.num_col_ = n
        lp.num_row_ = lp.a_matrix_.num_row_ = A.shape[0]
        lp.a_matrix_.format_ = h.MatrixFormat.kColwise
        lp.col_lower_ = np.zeros(n)
        lp.col_upper_ = np.full(n, h.kHighsInf)
        lp.row_lower_ = np.concatenate((np.full(len(self.b_ub), -h.kHighsInf), self.b_eq))
        lp.row_upper_ = np.concatenate((self.b_ub, self.b_eq))
        lp.a_matrix_.start_, lp.a_matrix_.index_ = start, index
        lp.a_matrix_.value_ = value
        opts = h.HighsOptions()
        opts.presolve = "on"
        opts.output_flag = opts.log_to_console = False
        opts.highs_debug_level = h.HighsDebugLevel.kHighsDebugLevelNone
        opts.simplex_strategy = h.simplex_constants.SimplexStrategy.kSimplexStrategyDual
        return lp, opts

    def minimize(self, c: np.ndarray) -> LPResult:
        """min c'x over the feasible set."""
        c = np.asarray(c, dtype="float64")
        if self._model is None:
            return self._linprog(c)
        h, (lp, opts) = self._h, self._model
        lp.col_cost_ = c
        # a new solver instance per objective, as linprog makes: a reused one keeps state
        # (scaling, factors) that moves the solution in its last bits
        model = h._Highs()
        model.passOptions(opts)
        model.passModel(lp)
        model.run()
        status = model.getModelStatus()
        if status != h.HighsModelStatus.kOptimal:
            return LPResult(_status(h, status), None, None)
        solution = model.getSolution()
        x = np.array(solution.col_value)
        fun = float(model.getInfo().objective_function_value)
        ok = self._feasible(x, fun, np.asarray(solution.row_value))
        return LPResult(0 if ok else 4, x, fun)

    def _feasible(self, x: np.ndarray, fun: float, rows: np.ndarray) -> bool:
        """linprog's check of a reported optimum (HiGHS's row values): bounds, inequality slack
        and equality residuals within TOL, no NaN."""
        m = len(self.b_ub)
        slack, con = self.b_ub - rows[:m], self.b_eq - rows[m:]
        if np.isnan(x).any() or np.isnan(fun) or np.isnan(slack).any() or np.isnan(con).any():
            return False
        return bool((x >= -TOL).all() and not (slack < -TOL).any() and (np.abs(con) <= TOL).all())

    def _linprog(self, c: np.ndarray) -> LPResult:
        from scipy.optimize import linprog

        A_ub = self.A_ub if len(self.b_ub) else None
        b_ub = self.b_ub if len(self.b_ub) else None
        res = linprog(c, A_ub, b_ub, self.A_eq, self.b_eq, bounds=(0, None), method="highs")
        ok = res.status == 0
        return LPResult(int(res.status), res.x if ok else None, float(res.fun) if ok else None)
