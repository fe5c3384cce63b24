"""The released support of a linear outcome (bounds, mass points, integer lattice) and the
array steps that keep a pin inside it: a bounded minimum-norm change, lattice rounding with a
greedy repair of the constraint gap, and the KS distance to the released grid.
Method: docs/method.md, "Layer 4: pinning", "Support of a pinned outcome".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

MASS_SHARE = (
    0.05  # a value holding at least this share of the released distribution is a mass point
)
ACTIVE_ROUNDS = 60  # bounded minimum-norm: rounds of freezing the rows that leave the box
ROUND_TOL = 0.01  # integer repair stops once every constraint is within this many target SEs
INTEGER_TOL = 0.05  # stated tolerance of an integer outcome's pinned coefficients, target SEs


@dataclass(frozen=True)
class Support:
    """What the release says a pinned outcome may take: `lo`..`hi` (the released grid's ends
    or the lowest and highest released level), `mass` (values holding >= MASS_SHARE of the
    released distribution: exact zeros, a bound many rows sit at), `lattice` (the allowed
    values of an integer or categorical outcome, ascending; None: continuous), and whether
    the released logical type is integer or boolean (the stored dtype after pinning);
    `atoms`: every released atom of a continuous outcome (values of at least min_cell_size
    rows), which the pin first tries to keep exactly."""

    lo: float
    hi: float
    mass: tuple[float, ...] = ()
    lattice: np.ndarray | None = None
    integer_dtype: bool = False
    boolean_dtype: bool = False
    atoms: tuple[float, ...] = ()
    inner: tuple[float, float] | None = None  # bounds of the rows off a mass point at lo / hi

    @property
    def discrete(self) -> bool:
        return self.lattice is not None

    def off_mass(self) -> Support:
        """The support of rows not on a mass point: a mass point at lo or hi (exact zeros, a
        top code many rows share) is left out, the bound moving to the next released value,
        so a pin that clips such rows keeps the mass point's share where the draw put it."""
        if self.inner is None or self.inner == (self.lo, self.hi):
            return self
        lo, hi = self.inner
        lattice = (
            None
            if self.lattice is None
            else self.lattice[(self.lattice >= lo) & (self.lattice <= hi)]
        )
        return replace(self, lo=lo, hi=hi, lattice=lattice, inner=None)


def _grid_mass(grid: np.ndarray) -> tuple[float, ...]:
    """Values repeated over at least MASS_SHARE of a 101-point grid's percent steps."""
    steps = int(round(MASS_SHARE * (len(grid) - 1)))
    vals, starts = np.unique(grid, return_index=True)
    ends = len(grid) - 1 - np.unique(grid[::-1], return_index=True)[1]
    return tuple(float(v) for v, s, e in zip(vals, starts, ends, strict=True) if e - s >= steps)


def _atom_mass(atoms: dict[str, Any]) -> tuple[float, ...]:
    """Released atoms holding at least MASS_SHARE of the column's non-missing rows (their
    exact shares, where a grid shows a mass only in 1% steps)."""
    counts = np.asarray(atoms["counts"], dtype="float64")
    total = counts.sum() + float((atoms.get("rest") or {}).get("n") or 0)
    return tuple(
        float(v) for v, c in zip(atoms["values"], counts, strict=True) if c >= MASS_SHARE * total
    )


def _inner(values: np.ndarray, mass: tuple[float, ...]) -> tuple[float, float] | None:
    """(lowest, highest) of the sorted released `values` once a mass point at either end is
    left out; None when neither end is one (or nothing is left between them)."""
    lo, hi = float(values[0]), float(values[-1])
    inside = values[
        (values > lo if lo in mass else values >= lo)
        & (values < hi if hi in mass else values <= hi)
    ]
    if len(inside) == 0 or (lo not in mass and hi not in mass):
        return None
    return float(inside[0]), float(inside[-1])


def support_of(release: dict[str, Any], column: str) -> Support | None:
    """The released support of `column` (source-level block), or None when the release holds
    no numeric marginal of it (suppressed, string, a non-numeric category)."""
    spec = next((c for c in release.get("columns", []) if c.get("name") == column), None)
    m = release.get("blocks", {}).get("all", {}).get("marginals", {}).get(column)
    if spec is None or m is None:
        return None
    int_dtype = spec.get("logical_type") == "integer" and bool(spec.get("integer"))
    if m.get("kind") == "continuous" and m.get("grid"):
        g = np.asarray(m["grid"], dtype="float64")
        if not np.all(np.isfinite(g)):
            return None
        lo, hi = float(g[0]), float(g[-1])
        lattice = None
        if spec.get("integer"):
            lattice = np.arange(np.ceil(lo), np.floor(hi) + 1.0)
        atoms = tuple(float(v) for v in (m.get("atoms") or {}).get("values", []))
        mass = _atom_mass(m["atoms"]) if m.get("atoms") else _grid_mass(g)
        inner = _inner(g if lattice is None else lattice, mass)
        if inner is not None and lattice is not None:  # the next whole values inside
            inner = (float(np.ceil(inner[0])), float(np.floor(inner[1])))
        return Support(lo, hi, mass, lattice, int_dtype, atoms=atoms, inner=inner)
    if m.get("kind") == "categorical":
        table = m.get("table") or {}
        try:
            levels = np.asarray(table.get("levels", []), dtype="float64")
        except (TypeError, ValueError):
            return None
        counts = np.asarray(table.get("counts", []), dtype="float64")
        if len(levels) < 2 or not np.all(np.isfinite(levels)) or len(counts) != len(levels):
            return None
        order = np.argsort(levels)
        levels, counts = levels[order], counts[order]
        share = counts / max(float(counts.sum()), 1.0)
        mass = tuple(float(v) for v, s in zip(levels, share, strict=True) if s >= MASS_SHARE)
        is_bool = spec.get("logical_type") == "boolean"
        lo, hi = float(levels[0]), float(levels[-1])
        return Support(lo, hi, mass, levels, int_dtype, is_bool, inner=_inner(levels, mass))
    return None


def out_of_support(y: np.ndarray, sup: Support) -> np.ndarray:
    """Rows (non-missing) outside the bounds or, for a discrete outcome, off its lattice."""
    ok = ~np.isnan(y)
    bad = ok & (
        (y < sup.lo - 1e-9 * max(1.0, abs(sup.lo))) | (y > sup.hi + 1e-9 * max(1.0, abs(sup.hi)))
    )
    if sup.lattice is not None:
        bad |= ok & ~np.isin(y, sup.lattice)
    return bad


def bounded_min_norm(
    V: np.ndarray,
    D: np.ndarray,
    z: np.ndarray,
    free: np.ndarray,
    lo: float,
    hi: float,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """The change delta (n,) of z with V' delta = D, zero off `free`, z + delta in [lo, hi]:
    the minimum-norm solution on the free rows (with `scale`, the least sum of
    (delta / scale)^2: rows move in those units, e.g. ranks of the marginal); rows it takes
    out of the box are set to the bound they crossed and frozen there, and the rest solved
    again (an active-set loop). Returns delta and whether the constraints hold (to 1e-9
    relative)."""
    delta = np.zeros(len(z))
    fixed = np.zeros(len(z), dtype=bool)
    ok = False
    W = V if scale is None else V * scale[:, None]
    Wf = W[free]
    G = Wf.T @ Wf  # Gram of the free rows, less each frozen row's part (no copy of V per round)
    del Wf
    for _ in range(ACTIVE_ROUNDS):
        F = free & ~fixed
        rest = D - V[fixed].T @ delta[fixed]
        lam = np.linalg.lstsq(G, rest, rcond=None)[0]
        dF = np.where(F, W @ lam if scale is None else scale * (W @ lam), 0.0)
        ok = bool(
            np.max(np.abs(V.T @ dF - rest), initial=0.0)
            <= 1e-9 * max(1.0, float(np.max(np.abs(rest), initial=0.0)))
        )
        new = z + dF
        out = F & ((new < lo) | (new > hi))
        delta[F] = dF[F]
        if not ok or not out.any():
            break
        idx = np.flatnonzero(out)
        delta[idx] = np.clip(new[idx], lo, hi) - z[idx]
        fixed[idx] = True
        Wi = W[idx]
        G = G - Wi.T @ Wi
    else:
        ok = False
    return delta, ok


def _neighbours(y: np.ndarray, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lattice points at or below and at or above each value (clipped to the ends)."""
    j = np.clip(np.searchsorted(lattice, y, side="right") - 1, 0, len(lattice) - 1)
    down = lattice[j]
    up = lattice[np.minimum(j + 1, len(lattice) - 1)]
    up = np.where(down >= y, down, up)
    return down, up


def round_to_lattice(
    y: np.ndarray, rows: np.ndarray, lattice: np.ndarray, gen: np.random.Generator
) -> np.ndarray:
    """y with the values at `rows` rounded to a neighbouring lattice point at random, up with
    probability equal to the distance from the lower one (unbiased: E[round(y)] = y)."""
    out = y.copy()
    v = y[rows]
    down, up = _neighbours(v, lattice)
    span = np.where(up > down, up - down, 1.0)
    p_up = np.where(up > down, (v - down) / span, 0.0)
    out[rows] = np.where(gen.random(len(v)) < p_up, up, down)
    return out


def _steps(y: np.ndarray, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The signed sizes of one lattice step down (<= 0) and up (>= 0) from each value."""
    j = np.searchsorted(lattice, y)
    j = np.clip(j, 0, len(lattice) - 1)
    down = np.where(j > 0, lattice[np.maximum(j - 1, 0)] - y, 0.0)
    up = np.where(j < len(lattice) - 1, lattice[np.minimum(j + 1, len(lattice) - 1)] - y, 0.0)
    return down, up


DITHER_STEPS = 6  # spread steps of the repair before its greedy rounds
REPAIR_POOL = 1 << 14  # rows the pair phase ranks: those with the largest first-order gains
REPAIR_REFRESH = 8  # pair steps between rebuilds of that pool from every live row


@dataclass
class _Moves:
    """The repair's candidate rows (positions into its `rows`) with their one-step lattice
    moves: a row keeps its value until it moves and moves at most once, so V, |V_i|^2 and
    the step sizes are computed once; `live`: not moved yet."""

    V: np.ndarray
    q: np.ndarray
    down: np.ndarray
    up: np.ndarray
    live: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, rows: np.ndarray, V: np.ndarray, lattice: np.ndarray) -> _Moves:
        Vr = V[rows]
        down, up = _steps(y[rows], lattice)
        q = np.einsum("ij,ij->i", Vr, Vr)
        return cls(Vr, q, down, up, np.ones(len(rows), dtype=bool))

    def gains(
        self, r: np.ndarray, at: np.ndarray | None, linear: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The better move t of the rows at positions `at` (every row when None) and the
        decrease of |r|^2 it gives (-inf for rows that moved): moving row i by t changes r by
        -t V_i, so |r|^2 falls by 2 t c_i - t^2 q_i with c = V r (`linear`: 2 t c_i only)."""
        sel = slice(None) if at is None else at
        c = self.V[sel] @ r
        t = np.where(c > 0, self.up[sel], self.down[sel])
        gain = 2 * t * c if linear else 2 * t * c - t * t * self.q[sel]
        return t, np.where(self.live[sel], gain, -np.inf)

    def pool(self, r: np.ndarray) -> np.ndarray:
        """Positions (ascending) of the REPAIR_POOL live rows with the largest first-order
        gains 2 t c_i at r (the pair phase's ranking)."""
        gain = self.gains(r, None, linear=True)[1]
        if len(gain) <= REPAIR_POOL:
            return np.arange(len(gain))
        return np.sort(np.argpartition(-gain, REPAIR_POOL - 1)[:REPAIR_POOL])


def repair_gap(
    y: np.ndarray,
    rows: np.ndarray,
    V: np.ndarray,
    r: np.ndarray,
    lattice: np.ndarray,
    tol: float = ROUND_TOL,
    max_rounds: int = 400,
) -> tuple[np.ndarray, np.ndarray]:
    """One-step lattice moves on `rows` (each row at most once) that bring the constraint gap
    r = D - V'(y - y_pinned) (in target SEs) below `tol`: each round takes the moves with
    the largest decrease of |r|^2 (batched by how far r still is), recomputes, and stops
    when none helps. Before them, spread steps (`_spread`) take r most of the way with few
    moves. Returns the new y and the remaining gap."""
    y = y.copy()
    mv = _Moves.of(y, rows, V, lattice)
    r = _spread(y, rows, mv, r, tol)
    for _ in range(max_rounds):
        if np.max(np.abs(r), initial=0.0) <= tol or not mv.live.any():
            break
        t, gain = mv.gains(r, None)
        top = float(np.max(gain))
        if top <= 0:
            break
        # each best move shortens r by about t c / |r|: about |r|^2 / (t c) of them close it
        take = _best(gain, max(1, min(int(float(r @ r) / (2 * top)), int(np.sum(gain > 0)))))
        while True:
            step = mv.V[take].T @ t[take]
            if len(take) == 1 or float((r - step) @ (r - step)) < float(r @ r):
                break
            take = take[: len(take) // 2]
        y[rows[take]] += t[take]
        r = r - step
        mv.live[take] = False
    return _repair_pairs(y, rows, mv, r, tol)


def _spread(y: np.ndarray, rows: np.ndarray, mv: _Moves, r: np.ndarray, tol: float) -> np.ndarray:
    """Steps that close the gap r with moves spread over the live rows (y changed in place;
    returns the new gap): the minimum-norm change d = V_L lambda with V_L'd = r, then row i
    moves one lattice step the way of d_i with probability |d_i| / step (systematic
    sampling in row order, so the same input gives the same rows), which closes r in
    expectation with few moved rows; again on the remaining gap while it shrinks by half."""
    for _ in range(DITHER_STEPS):
        if np.max(np.abs(r), initial=0.0) <= tol:
            break
        live = np.flatnonzero(mv.live)
        lam = np.linalg.lstsq(_gram_of_rows(mv.V, live), r, rcond=None)[0]
        d = _rows_times(mv.V, live, lam)
        t = np.where(d > 0, mv.up[live], mv.down[live])
        p = np.where(t != 0, np.minimum(np.abs(d) / np.where(t != 0, np.abs(t), 1.0), 1.0), 0.0)
        u = np.floor(np.cumsum(p) + 0.5)
        take = np.flatnonzero(np.diff(u, prepend=0.0) > 0)
        new = r - mv.V[live[take]].T @ t[take]
        if not len(take) or float(new @ new) > 0.25 * float(r @ r):
            break
        y[rows[live[take]]] += t[take]
        mv.live[live[take]] = False
        r = new
    return r


ROW_CHUNK = 1 << 16  # rows per block when a product over selected rows is formed in blocks


def _gram_of_rows(V: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """V[rows]' V[rows], summed over blocks of rows so no copy of V[rows] is held."""
    G = np.zeros((V.shape[1], V.shape[1]))
    for s in range(0, len(rows), ROW_CHUNK):
        block = V[rows[s : s + ROW_CHUNK]]
        G += block.T @ block
    return G


def _rows_times(V: np.ndarray, rows: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """V[rows] @ lam, by blocks of rows (no copy of V[rows])."""
    out = np.empty(len(rows))
    for s in range(0, len(rows), ROW_CHUNK):
        out[s : s + ROW_CHUNK] = V[rows[s : s + ROW_CHUNK]] @ lam
    return out


def _best(gain: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest gains, largest first (ties in position order)."""
    if k < len(gain):
        top = np.sort(np.argpartition(-gain, k - 1)[:k])
    else:
        top = np.arange(len(gain))
    return top[np.argsort(-gain[top], kind="stable")]


PAIR_CANDIDATES = 300  # rows per direction the pair phase of the repair looks at


def _repair_pairs(
    y: np.ndarray,
    rows: np.ndarray,
    mv: _Moves,
    r: np.ndarray,
    tol: float,
    max_pairs: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """The repair's second phase, for gaps below one row's step (a 0/1 outcome: one flip
    moves a coefficient by about 1/(sigma sqrt(n)) SE): one row up and one down together,
    whose net change V_i t_i + V_j t_j is small, the pair with the largest decrease of |r|^2
    among the PAIR_CANDIDATES best live rows of `mv` each way, until |r| <= tol or no pair
    helps."""
    pool, age = mv.pool(r), 0
    for _ in range(max_pairs):
        if np.max(np.abs(r), initial=0.0) <= tol or np.count_nonzero(mv.live[pool]) < 2:
            break
        if age >= REPAIR_REFRESH:
            pool, age = mv.pool(r), 0
        age += 1
        V, live = mv.V[pool], mv.live[pool]
        up, down = mv.up[pool], mv.down[pool]
        c = V @ r
        ups = np.flatnonzero(live & (up > 0))
        downs = np.flatnonzero(live & (down < 0))
        if not len(ups) or not len(downs):
            break
        m = max(20, min(PAIR_CANDIDATES, int(np.sqrt(4e6 / max(len(r), 1)))))  # m^2 K floats
        ups = ups[_best(up[ups] * c[ups], min(m, len(ups)))]
        downs = downs[_best(down[downs] * c[downs], min(m, len(downs)))]
        U = r - V[ups] * up[ups, None]  # r after the up move of each candidate
        W = V[downs] * down[downs, None]
        # |U_a - W_b|^2 = |U_a|^2 - 2 U_a'W_b + |W_b|^2
        left = np.einsum("ij,ij->i", U, U)[:, None] - 2.0 * (U @ W.T)
        gain = float(r @ r) - (left + np.einsum("ij,ij->i", W, W)[None, :])
        gain[ups[:, None] == downs[None, :]] = -np.inf
        a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[a, b] <= 0:
            break
        i, j = pool[ups[a]], pool[downs[b]]
        y[rows[i]] += mv.up[i]
        y[rows[j]] += mv.down[j]
        r = U[a] - W[b]
        mv.live[[i, j]] = False
    return y, r


SWAP_ROUNDS = 400  # batches of exchanges the swap repair takes at most
SWAP_POOL = 1 << 17  # rows the exchanges use when there are more than twice as many
SE_WEIGHT = 0.5  # a log SE gap of 0.02 (the SE slack) weighs as a coefficient gap of 0.01


@dataclass
class SeProxy:
    """The SEs of a pinned group as the swap repair tracks them: Q_k = sum_i W_ik e_ik^2 (the
    HC0 sandwich of term k over the target SE^2: W = V^2, e_ik = y_i - F_ik with F the fitted
    values of term k's checkpoint) and the log SE gaps `gap` measured by the refit at `Q`;
    an exchange moves gap_k by 1/2 log(Q_k'/Q_k)."""

    W: np.ndarray
    F: np.ndarray
    Q: np.ndarray
    gap: np.ndarray
    _wf: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def wf(self) -> np.ndarray:
        """W * F, formed once: every round's pull and first-order scores read it."""
        if self._wf is None:
            self._wf = self.W * self.F
        return self._wf

    def changes(self, y: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
        """(p, K): the change of Q_k when rows up[p] and down[p] exchange their values."""
        ya, yb = y[up][:, None], y[down][:, None]
        Fa, Fb, Wa, Wb = self.F[up], self.F[down], self.W[up], self.W[down]
        return Wa * ((yb - Fa) ** 2 - (ya - Fa) ** 2) + Wb * ((ya - Fb) ** 2 - (yb - Fb) ** 2)

    def first_order(self, y: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
        """(m, m): gap'h for every exchange of rows up[a] and down[b], h_k = 1/2 dQ_k / Q_k the
        first-order move of log SE gap k (one exchange moves Q_k by O(1/n)). dQ is a sum of
        products of a row's and its partner's terms, so no (m, m, K) array is formed."""
        c = self.gap / self.Q
        au, ad = self.W[up] @ c, self.W[down] @ c  # only the 2m rows scored, not the whole pool
        WF = self.wf()
        bu, bd = WF[up] @ c, WF[down] @ c
        ya, yb = y[up][:, None], y[down][None, :]
        da, db = au[:, None] - ad[None, :], bu[:, None] - bd[None, :]
        return 0.5 * ((yb * yb - ya * ya) * da - 2.0 * (yb - ya) * db)

    def gaps(self, dQ: np.ndarray) -> np.ndarray:
        return self.gap + 0.5 * np.log(np.maximum(1.0 + dQ / self.Q, 1e-12))

    def pull(self, y: np.ndarray) -> np.ndarray:
        """Minus half the gradient of SE_WEIGHT^2 |gap|^2 at each row of this proxy (who wants
        to go up; y the values of those rows): W(y - F) c as y Wc - (W F) c, two products
        with no rows × terms temporary."""
        c = self.gap / self.Q
        return -(SE_WEIGHT**2) * (y * (self.W @ c) - self.wf() @ c)


def swap_repair(
    y: np.ndarray,
    rows: np.ndarray,
    V: np.ndarray,
    r: np.ndarray,
    tol: float = ROUND_TOL,
    se: SeProxy | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exchanges of values between two of `rows` that bring the constraint gap
    r = D - V'(y - y_pinned) (target SEs) below `tol`, the column's values staying the same
    multiset (atoms keep their counts): exchanging rows i and j changes V'y by
    (y_j - y_i)(V_i - V_j). With `se` (the proxy on the rows `swap_pool(rows)`, in their
    order; its gap and Q are updated in place), the log SE gaps join the objective (weight
    SE_WEIGHT).
    Each round scores every exchange between the PAIR_CANDIDATES rows that gain most from
    taking the largest value and those that gain most from taking the smallest (first order:
    the pull V_i r, plus the SE part's, times the room), takes the best exchange of each row
    (distinct partners, largest decrease first, as many as the gap still needs) and stops
    when none helps. Above 2 SWAP_POOL rows the exchanges are among SWAP_POOL evenly spaced
    ones (each round's ranking stays a small share of the data). Returns the new y and the gap."""
    y = y.copy()
    rows = swap_pool(rows)  # indices below are positions in `rows`
    Vr = V[rows]
    for _ in range(SWAP_ROUNDS):
        done = se is None or np.max(np.abs(se.gap), initial=0.0) <= 2 * tol
        if (done and np.max(np.abs(r), initial=0.0) <= tol) or len(rows) < 2:
            break
        v = y[rows]  # first-order gain of giving row i the largest value, row j the smallest
        pull = Vr @ r + (0.0 if se is None else se.pull(v))
        m = max(20, min(PAIR_CANDIDATES, int(np.sqrt(4e6 / max(len(r), 1))), len(rows) // 2))
        up_key, down_key = pull * (v.max() - v), -pull * (v - v.min())
        ua, da = _largest(up_key, m), _largest(down_key, m)
        up, down = rows[ua], rows[da]
        gain = _exchange_gains(v, Vr, r, ua, da, se)
        gain[up[:, None] == down[None, :]] = -np.inf
        a, b = _distinct_best(gain)
        if len(a) == 0:
            break
        take = max(1, min(len(a), int(float(r @ r) / (2 * gain[a[0], b[0]]))))
        before = float(r @ r) + (0.0 if se is None else SE_WEIGHT**2 * float(se.gap @ se.gap))
        while True:
            pa, pb = ua[a[:take]], da[b[:take]]
            step = (v[pb] - v[pa]) @ (Vr[pa] - Vr[pb])
            after = float((r - step) @ (r - step))
            moved = None if se is None else se.changes(v, pa, pb).sum(axis=0)
            if se is not None and moved is not None:
                g = SE_WEIGHT * se.gaps(moved)
                after += float(g @ g)
            if take == 1 or after < before:
                break
            take //= 2
        i, j = rows[pa], rows[pb]
        y[i], y[j] = y[j].copy(), y[i].copy()
        r = r - step
        if se is not None and moved is not None:
            se.gap, se.Q = se.gaps(moved), se.Q + moved
    return y, r


def _exchange_gains(
    v: np.ndarray, V: np.ndarray, r: np.ndarray, ua: np.ndarray, da: np.ndarray, se: SeProxy | None
) -> np.ndarray:
    """(m, m): the decrease of the repair's objective when pool rows ua[a] and da[b] exchange
    their values `v`: |r|^2 - |r - t (V_a - V_b)|^2 with t = v_b - v_a, expanded so that only
    an (m, K) x (K, m) product is formed, and the SE part to first order (`SeProxy.first_order`)."""
    Va, Vb = V[ua], V[da]
    t = v[da][None, :] - v[ua][:, None]
    na, nb = np.einsum("ik,ik->i", Va, Va), np.einsum("ik,ik->i", Vb, Vb)
    norm = na[:, None] + nb[None, :] - 2.0 * (Va @ Vb.T)
    gain = 2.0 * t * ((Va @ r)[:, None] - (Vb @ r)[None, :]) - t * t * norm
    if se is not None:
        gain -= 2.0 * SE_WEIGHT**2 * se.first_order(v, ua, da)
    return gain


def swap_pool(rows: np.ndarray) -> np.ndarray:
    """The rows the exchanges use: SWAP_POOL evenly spaced ones of `rows` when there are more
    than twice as many, else all of them."""
    if len(rows) > 2 * SWAP_POOL:
        return rows[np.unique(np.linspace(0, len(rows) - 1, SWAP_POOL).astype("int64"))]
    return rows


def _largest(key: np.ndarray, m: int) -> np.ndarray:
    """`np.argsort(-key, kind="stable")[:m]` (the m largest, ties by position) without
    sorting every entry: a partition finds the m-th largest, then only the entries at or
    above it are sorted."""
    if m >= len(key):
        return np.argsort(-key, kind="stable")[:m]
    neg = -key
    cut = np.partition(neg, m - 1)[m - 1]
    if np.isnan(cut):
        return np.argsort(neg, kind="stable")[:m]
    cand = np.flatnonzero(neg <= cut)
    return cand[np.argsort(neg[cand], kind="stable")[:m]]


def _distinct_best(gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the best positive entry of each row of `gain`, largest first, each
    column used once (a row whose best column is taken is left out)."""
    b = np.argmax(gain, axis=1)
    g = gain[np.arange(len(b)), b]
    a = np.argsort(-g, kind="stable")
    a = a[g[a] > 0]
    _, first = np.unique(b[a], return_index=True)
    a = a[np.sort(first)]
    return a, b[a]
