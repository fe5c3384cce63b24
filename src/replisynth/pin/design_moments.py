"""Cross-moments of checkpoint regressors, matched outside: before pinning, regressor values
are reordered within blocks so each checkpoint's design moments match the released ones
(`align_moments`). Method: docs/method.md, "Cross-moments of checkpoint regressors".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import (
    evaluate,
    formulaic_context,
    model_matrix,
    parse_formula,
    term_tree,
)
from replisynth.config.manifest import checkpoint_from_release, formula_variables
from replisynth.core.options import GLM_MODELS
from replisynth.disclosure.bundle_types import CheckpointRecord, SourceRelease, untyped
from replisynth.stats.cells import CellGuard
from replisynth.stats.copula_dims import norm_key, synthetic_dim_matrix
from replisynth.stats.correlations import _Ranker
from replisynth.stats.design import (
    _iv_matrices,
    _widen_integers,
    estimation_sample,
    split_iv_formula,
)
from replisynth.synthesize.entities import entity_frozen
from replisynth.synthesize.refine import (
    _block,
    _proposal_terms,
    _View,
    accept_swaps,
    best_prefix,
    block_target,
    draw_pairs,
    penalty,
    view_sums,
)

SE_FACTOR_TOL = (
    0.02  # |log SE factor gap| below which a checkpoint alone on its outcome needs no alignment
)
# GLMs and fe: the factors of the unweighted raw moments are not their SEs' own (likelihood
# weights; within moments), so they are judged by a quarter of the tolerance: the alignment
# moves only those raw moments, and within it they are about as close as its sweeps leave them
PROXY_FACTOR_TOL = SE_FACTOR_TOL / 4
# A clustered SE over G clusters is itself known to about 1/sqrt(2(G - 1)) in log terms; a design
# gap of this share of that adds at most ½ CLUSTER_SHARE² (0.5%) to its error, in quadrature
CLUSTER_SHARE = 0.1
MEAN_SD_WEIGHT = 1.0  # weight of a mean/SD gap (in released SDs) relative to a correlation gap


def _stats(W: float, S1: np.ndarray, S2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean offsets, SDs, correlations) from shifted running sums; leading axes broadcast."""
    m = S1 / W
    C = S2 / W - m[..., :, None] * m[..., None, :]
    sd = np.sqrt(np.maximum(np.diagonal(C, axis1=-2, axis2=-1), 1e-300))
    return m, sd, C / (sd[..., :, None] * sd[..., None, :])


@dataclass
class _Target:
    """One checkpoint's state: released moments, its sample weights per data row (0 outside
    the sample), the formulaic spec, the design positions of the released columns, the
    variables its right-hand side reads, and the running sums (shifted by the target mean)."""

    tag: str
    spec: Any
    cols: list[int]
    rhs: set[str]
    read: list[str]
    w: np.ndarray
    W: float
    mean: np.ndarray
    sd: np.ndarray
    R: np.ndarray
    Rmask: np.ndarray
    S1: np.ndarray
    S2: np.ndarray
    compiled: _Compiled | None = None
    # iv with released instrument moments: positions (in the released columns) of X's and Z's
    # non-constant columns, and the released log SE factors (see `_iv_log_se_factors`)
    iv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    clusters: int | None = None  # clusters in the sample of a clustered vcov

    def error(self, S1: np.ndarray, S2: np.ndarray) -> np.ndarray:
        """Squared gaps of correlations (each pair once) and of means and SDs in released SDs;
        for iv, plus the squared gaps of the log SE factors (`IV_SE_WEIGHT`)."""
        m, sd, R = _stats(self.W, S1, S2)
        eR = np.where(self.Rmask, R - self.R, 0.0)
        es = sd / self.sd - 1.0
        em = m / self.sd
        out = 0.5 * (eR * eR).sum(axis=(-1, -2)) + MEAN_SD_WEIGHT * (
            (em * em).sum(-1) + (es * es).sum(-1)
        )
        if self.iv is not None:
            e = _iv_log_se_factors(R, self.iv[0], self.iv[1]) - self.iv[2]
            out = out + IV_SE_WEIGHT * (e * e).sum(-1)
        return out

    def part_error(self, tc: np.ndarray, S1T: np.ndarray, S2T: np.ndarray) -> np.ndarray:
        """`error` less the terms that do not involve the columns `tc`, when only those
        columns change: S1T (..., |tc|) and S2T (..., |tc|, k) are the new rows `tc` of S1
        and S2 (leading axes broadcast). A swap that leaves the other columns alone changes
        `error` by exactly the change of this, at O(|tc| k) instead of O(k²) per proposal."""
        W, k, nt = self.W, len(self.sd), len(tc)
        lead = S1T.shape[:-1]
        m = np.broadcast_to(self.S1 / W, (*lead, k)).copy()
        m[..., tc] = S1T / W
        s2 = np.broadcast_to(np.diagonal(self.S2), (*lead, k)).copy()
        s2[..., tc] = S2T[..., np.arange(nt), tc]
        sd = np.sqrt(np.maximum(s2 / W - m * m, 1e-300))
        mT, sdT = m[..., tc], sd[..., tc]
        R = (S2T / W - mT[..., :, None] * m[..., None, :]) / (sdT[..., :, None] * sd[..., None, :])
        eR = np.where(self.Rmask[tc], R - self.R[tc], 0.0)
        sq = eR * eR
        # pairs in rows tc count twice in 0.5 Σ over the symmetric matrix, those in tc × tc once
        pairs = sq.sum(axis=(-1, -2)) - 0.5 * sq[..., tc].sum(axis=(-1, -2))
        es = sdT / self.sd[tc] - 1.0
        em = mT / self.sd[tc]
        out = pairs + MEAN_SD_WEIGHT * ((em * em).sum(-1) + (es * es).sum(-1))
        if (
            self.iv is not None
        ):  # the SE factors depend on every correlation: full matrices (iv only)
            S1f = np.broadcast_to(self.S1, (*lead, k)).copy()
            S1f[..., tc] = S1T
            S2f = np.broadcast_to(self.S2, (*lead, k, k)).copy()
            S2f[..., tc, :] = S2T
            S2f[..., :, tc] = np.swapaxes(S2T, -1, -2)
            e = _iv_log_se_factors(_stats(W, S1f, S2f)[2], self.iv[0], self.iv[1]) - self.iv[2]
            out = out + IV_SE_WEIGHT * (e * e).sum(-1)
        return out

    def se_factor_gap(self) -> float:
        """Largest |log SE factor gap| of the design now: the part of log(SE_synthetic /
        SE_released) that the released columns' means, SDs and correlations set, for every
        slope (½ log [R⁻¹]_jj − log sd_j; iv: the 2SLS factors of `_iv_log_se_factors`) and,
        outside iv, the intercept (½ log(1 + z′R⁻¹z), z = mean / sd). Blanked correlations take
        the synthetic value on both sides (nothing released to compare)."""
        m, sd, R = _stats(self.W, self.S1, self.S2)
        Rr = np.where(self.Rmask, self.R, R)
        np.fill_diagonal(Rr, 1.0)
        if self.iv is not None:
            ix, iz, target = self.iv
            gap = _iv_log_se_factors(R, ix, iz) - target - np.log(sd[ix] / self.sd[ix])
            return float(np.max(np.abs(gap), initial=0.0))
        out = _log_se_factors(self.mean + m, sd, R) - _log_se_factors(self.mean, self.sd, Rr)
        return float(np.max(np.abs(out), initial=0.0))

    def gaps(self) -> dict[str, float]:
        """Largest |correlation gap|, |mean gap| / SD and |SD ratio − 1| now (iv: and the largest
        |log SE factor gap|, the part of log(SE ratio) that the design correlations set)."""
        m, sd, R = _stats(self.W, self.S1, self.S2)
        eR = np.where(self.Rmask, np.abs(R - self.R), 0.0)
        out = {
            "max_corr_gap": float(eR.max(initial=0.0)),
            "max_mean_gap_sd": float(np.max(np.abs(m / self.sd), initial=0.0)),
            "max_sd_ratio_gap": float(np.max(np.abs(sd / self.sd - 1.0), initial=0.0)),
        }
        if self.iv is not None:
            out["max_iv_log_se_gap"] = float(
                np.max(
                    np.abs(_iv_log_se_factors(R, self.iv[0], self.iv[1]) - self.iv[2]), initial=0.0
                )
            )
        return out


def _log_se_factors(mean: np.ndarray, sd: np.ndarray, R: np.ndarray) -> np.ndarray:
    """[intercept, slopes] log SE factors of an OLS/WLS design with these column moments:
    Var(b) = σ²/W · (X′WX/W)⁻¹, whose slope diagonal is [R⁻¹]_jj / sd_j² and intercept entry
    1 + z′R⁻¹z (z = mean / sd). A singular R gives +inf (never within a tolerance)."""
    try:
        Rinv = np.linalg.inv(R)
    except np.linalg.LinAlgError:
        return np.full(len(sd) + 1, np.inf)
    z = mean / sd
    with np.errstate(all="ignore"):
        d = np.concatenate([[1.0 + z @ Rinv @ z], np.diagonal(Rinv) / (sd * sd)])
        out = 0.5 * np.log(d)
    return np.where(np.isfinite(out) & (d > 0), out, np.inf)


IV_SE_WEIGHT = (
    1.0  # weight of a squared log SE-factor gap (iv) relative to a squared correlation gap
)


def _iv_log_se_factors(R: np.ndarray, ix: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """½ log diag[(R_xz R_zz⁻¹ R_zx)⁻¹] for the correlation matrix R of the union design (leading
    axes broadcast): with standardised columns, the 2SLS covariance is σ²/n · (X'P_Z X / n)⁻¹ and
    X'P_Z X / n = R_xz R_zz⁻¹ R_zx once the intercept is partialled out, so these are the log SEs
    of the slopes up to σ, n and the columns' SDs (matched separately). A weak first stage makes
    them sensitive to correlation gaps far below what the correlation objective notices (card:
    educ on nearc4, first-stage t ≈ 4: gaps of 0.005 move the educ SE by ~6%)."""
    Rzz = R[..., iz[:, None], iz[None, :]]
    Rzx = R[..., iz[:, None], ix[None, :]]
    with np.errstate(all="ignore"):
        try:
            A = np.swapaxes(Rzx, -1, -2) @ np.linalg.solve(Rzz, Rzx)
            d = np.diagonal(np.linalg.inv(A), axis1=-2, axis2=-1)
        except np.linalg.LinAlgError:  # an exactly singular candidate in the batch: one at a time
            zz, zx = Rzz.reshape(-1, len(iz), len(iz)), Rzx.reshape(-1, len(iz), len(ix))
            d = np.full((len(zz), len(ix)), np.inf)
            for i in range(len(zz)):
                try:
                    d[i] = np.diag(np.linalg.inv(zx[i].T @ np.linalg.solve(zz[i], zx[i])))
                except np.linalg.LinAlgError:
                    pass
            d = d.reshape(*R.shape[:-2], len(ix))
        out = 0.5 * np.log(np.maximum(d, 1e-300))
    # a singular or collinear design (no first stage left) scores as a large gap, never as NaN,
    # so the swap that would produce it is not taken and the objective stays comparable
    return np.nan_to_num(out, nan=_IV_FAR, posinf=_IV_FAR, neginf=-_IV_FAR)


_IV_FAR = 10.0  # log SE factor standing in for a singular first stage


_INDICATOR = re.compile(
    r"^(?:C\((?P<c>[A-Za-z_][A-Za-z0-9_.]*)\)|(?P<b>[A-Za-z_][A-Za-z0-9_.]*))\[T\.(?P<level>.*)\]$"
)


def _split_factors(term: str) -> list[str]:
    """Factors of a design column name `a:b:c`, splitting only outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in term:
        depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
        if ch == ":" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


class _Compiled:
    """A per-term evaluator of design columns from column arrays, for the formula forms
    checkpoints use: x, I(expr), log(x)-style calls, C(x)[T.level] / x[T.level] and their
    interactions. `columns` maps a data column to float values (numeric) or to (codes,
    labels) (others). Trusted only after it reproduces formulaic's design on the sample."""

    def __init__(self, names: list[str], df: pd.DataFrame, read: list[str]):
        self.num: dict[str, np.ndarray] = {}
        self.codes: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._series = {col: df[col] for col in read}
        for col in read:
            sr = df[col]
            if pd.api.types.is_numeric_dtype(sr.dtype) and not pd.api.types.is_bool_dtype(sr.dtype):
                self.num[col] = pd.to_numeric(sr, errors="coerce").to_numpy(
                    dtype="float64", na_value=np.nan
                )
        self.plan = [[self._factor(f) for f in _split_factors(n)] for n in names]

    def _factor(self, f: str) -> tuple[Any, ...]:
        m = _INDICATOR.match(f)
        if m and (m.group("c") or m.group("b")) in self._series:
            col = m.group("c") or m.group("b")
            if col not in self.codes:  # level codes only for columns read as indicators
                codes, uniques = pd.factorize(self._series[col], use_na_sentinel=True)
                self.codes[col] = (
                    np.where(codes < 0, len(uniques), codes),
                    [str(u) for u in uniques],
                )
            labels = self.codes[col][1]
            return ("ind", col, np.asarray([lab == m.group("level") for lab in labels] + [False]))
        if f in self.num:
            return ("num", f)
        # a term of a formula checked against the grammar: evaluated by the grammar's own
        # evaluator (column arrays and the allow-listed functions), never by Python's eval
        parsed = parse_formula(f"_ ~ {f}")
        used = sorted(c for c in parsed.columns if c != "_")
        if not set(used) <= set(self.num):
            raise ValueError(f"term {f!r} reads a column that is not numeric")
        node, quoted = term_tree(f)
        return ("expr", (node, quoted), used)

    def rows(self, idx: dict[str, np.ndarray]) -> np.ndarray:
        """Design columns at the rows `idx[col]` of each column's base values."""
        n = len(next(iter(idx.values())))
        out = np.ones((n, len(self.plan)))
        for j, factors in enumerate(self.plan):
            for f in factors:
                if f[0] == "num":
                    out[:, j] *= self.num[f[1]][idx[f[1]]]
                elif f[0] == "ind":
                    out[:, j] *= f[2][self.codes[f[1]][0][idx[f[1]]]]
                else:
                    vals = {c: self.num[c][idx[c]] for c in f[2]}
                    with np.errstate(all="ignore"):
                        out[:, j] *= evaluate(f[1][0], vals.__getitem__, f[1][1])
        return out


def _design_rows(t: _Target, frame: pd.DataFrame) -> np.ndarray:
    """Released design columns of `frame`'s rows under the checkpoint's model spec (NaN → 0:
    such rows are outside the sample and carry weight 0)."""

    mm = t.spec.get_model_matrix(
        _widen_integers(frame), na_action="ignore", context=formulaic_context()
    )
    X = np.asarray(mm, dtype="float64")[:, t.cols]
    return np.nan_to_num(X, nan=0.0)


def moment_formula(formula: str, model: str) -> str:
    """The formula whose design carries a checkpoint's released moments: the formula itself,
    except for iv, where formulaic cannot read the linearmodels bracket and the released
    design is the union [exogenous | endogenous | excluded instruments]: `y ~ w + [x ~ z]`
    becomes `y ~ w + x + z` (formulaic names its columns as `design._iv_matrices` does, the
    bracket's columns being those it adds to the exogenous design)."""
    if model != "iv":
        return formula

    exog, endog, instr = split_iv_formula(formula)
    return f"{exog} + {endog} + {instr}"


def _target(
    df: pd.DataFrame,
    c: dict[str, Any],
    compile_rows: bool = True,
    skip: Callable[[_Target], bool] | None = None,
) -> tuple[_Target | None, str]:
    """The state of one released checkpoint on the synthetic data (None and a note when its
    design cannot be built or holds none of the released columns); without the row evaluator
    when `compile_rows` is False or `skip` says the state needs none."""

    mo = c["moments"]
    cp = checkpoint_from_release(c)
    try:
        data = estimation_sample(df, cp)
        mm = model_matrix(moment_formula(cp.formula, cp.model), data, "raise", cp.tag)
    except Exception as exc:  # a design that cannot be built is reported, not fatal here
        return None, f"{cp.tag}: design not built on the synthetic data ({type(exc).__name__})"
    names = [str(x) for x in mm.rhs.columns]
    have = [i for i, t in enumerate(mo["terms"]) if t in names]
    if not have:
        return None, f"{cp.tag}: no released moment column in the synthetic design"
    cols = [names.index(mo["terms"][i]) for i in have]
    mean = np.asarray(mo["mean"], dtype="float64")[have]
    sd = np.asarray(mo["sd"], dtype="float64")[have]
    R = np.asarray(
        [[np.nan if v is None else v for v in row] for row in mo["corr"]], dtype="float64"
    )[np.ix_(have, have)]
    Rmask = np.isfinite(R) & ~np.eye(len(have), dtype=bool) & (sd[:, None] > 0) & (sd[None, :] > 0)
    pos = df.index.get_indexer(data.index)
    w = np.zeros(len(df))
    w[pos] = data[cp.weights].to_numpy(dtype="float64") if cp.weights else 1.0
    X = np.asarray(mm.rhs, dtype="float64")[:, cols] - mean
    ws = w[pos]
    rhs = formula_variables(cp.formula) - {cp.outcome}
    t = _Target(
        tag=cp.tag,
        spec=mm.rhs.model_spec,
        cols=cols,
        rhs=rhs,
        read=sorted(rhs & set(df.columns)),
        w=w,
        W=float(ws.sum()),
        mean=mean,
        sd=np.where(sd > 0, sd, 1.0),
        R=np.where(Rmask, R, 0.0),
        Rmask=Rmask,
        S1=ws @ X,
        S2=(X * ws[:, None]).T @ X,
        iv=_iv_positions(data, cp, mo, have, R),
        clusters=int(data[cp.cluster].nunique()) if cp.cluster else None,
    )
    if not compile_rows or (skip is not None and skip(t)):  # the state alone: no row evaluator
        return t, ""
    try:
        comp = _Compiled([names[j] for j in cols], df, t.read)
        # compared in slices of rows: the same test without n × k temporaries (memory peak)
        step = 1 << 16
        same = all(
            np.allclose(
                comp.rows({c: pos[a : a + step] for c in t.read}),
                X[a : a + step] + mean,
                rtol=1e-12,
                atol=1e-12,
            )
            for a in range(0, len(pos), step)
        )
    except Exception:  # an unrecognised formula form: formulaic evaluates the swapped rows
        same = False
    t.compiled = comp if same else None
    return t, ""


def _expand(
    k: int, tc: np.ndarray, d1: np.ndarray, d2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Full changes of S1 (k,) and S2 (k × k, symmetric) from their rows `tc` (the only
    columns a swap touched): d1 (|tc|,), d2 (|tc| × k)."""
    D1 = np.zeros(k)
    D1[tc] = d1
    D2 = np.zeros((k, k))
    D2[tc, :] = d2
    D2[:, tc] = d2.T
    return D1, D2


def _iv_positions(
    data: pd.DataFrame, cp: Any, mo: dict[str, Any], have: list[int], R: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For an iv checkpoint whose released moments hold its instruments: the positions, among
    the released columns kept (`have`), of X = [exogenous | endogenous] and Z = [exogenous |
    instruments], and the released log SE factors. None (no SE-factor term) when the bundle
    has no instrument moments (older bundles), when SDC left out so many columns that the
    released instruments no longer identify the released endogenous ones, or when a needed
    correlation was blanked."""

    instruments = set(mo.get("instruments") or [])
    if cp.model != "iv" or not instruments:
        return None
    try:
        _, _, terms, _, n_exog, _ = _iv_matrices(data, cp, cp.tag)
    except Exception:
        return None
    names = [mo["terms"][i] for i in have]
    exog, endog = set(terms[:n_exog]), set(terms[n_exog:])
    ix = np.asarray([a for a, t in enumerate(names) if t in exog or t in endog], dtype=np.int64)
    iz = np.asarray(
        [a for a, t in enumerate(names) if t in exog or t in instruments], dtype=np.int64
    )
    n_endog = sum(t in endog for t in names)
    if n_endog == 0 or sum(t in instruments for t in names) < n_endog:
        return None
    both = np.union1d(ix, iz)
    if not np.all(np.isfinite(R[np.ix_(both, both)])):
        return None
    target = _iv_log_se_factors(R, ix, iz)
    return (ix, iz, target) if np.all(np.abs(target) < _IV_FAR) else None


def _dim_columns(df: pd.DataFrame, release: dict[str, Any], need: np.ndarray) -> np.ndarray:
    """`dims.synthetic_dim_matrix(df, release)` in the dims `need` (n × d, column-major; the
    other columns 0). Each dim's value is a function of its column's value alone, so a column
    with few distinct values is coded once per distinct value (on one row holding it, so
    its dtype is kept) and spread back by its factorize codes: the same floats without a
    pass of the level lookups over every row."""

    dims = release["dims"]
    n = len(df)
    X = np.zeros((n, len(dims)), order="F")
    by_col: dict[str, list[int]] = {}
    for j in np.flatnonzero(need):
        by_col.setdefault(dims[j]["column"], []).append(int(j))
    for col, ks in by_col.items():
        sub = {**release, "dims": [dims[k] for k in ks]}
        if all(
            dims[k]["kind"] in ("continuous", "missing") for k in ks
        ):  # a numeric conversion: no lookups to save
            X[:, ks] = synthetic_dim_matrix(df[[col]], sub)
            continue
        codes, uniq = pd.factorize(df[col], use_na_sentinel=True)
        if 8 * (len(uniq) + 1) > n:
            X[:, ks] = synthetic_dim_matrix(df[[col]], sub)
            continue
        # the first row of each code: factorize numbers values in order of appearance, so code
        # k first appears where the codes pass their running maximum (missing: code -1, put first)
        run = np.maximum.accumulate(codes)
        first = np.flatnonzero(np.concatenate([[codes[0] >= 0], codes[1:] > run[:-1]]))
        off = int(bool(np.any(codes < 0)))
        if off:
            first = np.concatenate([[int(np.argmax(codes < 0))], first])
        small = synthetic_dim_matrix(df[[col]].iloc[first], sub)
        X[:, ks] = small[codes + off]
    return X


def _views(
    columns: Callable[[np.ndarray], np.ndarray],
    groups: list[tuple[str, np.ndarray]],
    masks: list[np.ndarray],
    targets: list[np.ndarray],
) -> list[_View]:
    """`refine._view` of each row set `groups[i][1]` (ascending rows) against `targets[i]`
    (0 off the released pairs), with its pair mask `masks[i]` applied, built for the
    alignment: scores only for the dims in a masked pair (a dim in none is never read; its
    column stays 0, its sums are masked out), each column prepared for ranking once over all
    rows (`correlations._Ranker`) and ranked per view by counting (exact mid-ranks, so the
    scores are bit-identical to `refine.scores` per view), instead of a sort of every column
    in every view. One thread: a second one raised the memory peak (per-thread allocator
    arenas) for little time saved. `columns(need)` gives the
    dim matrix (n × d, NaN = missing) in the dims `need`; it is dropped once they are ranked."""

    d = len(masks[0]) if masks else 0
    need = np.zeros(d, dtype=bool)
    for M in masks:
        need |= M.any(axis=1)
    Xd: np.ndarray | None = columns(need)
    assert Xd is not None
    n = len(Xd)

    # per dim: presence, each present row's tie group (`_Ranker.codes`, in value order) with
    # their number, and the position of every row among the present ones
    def prepare(j: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        assert Xd is not None  # dropped only after every column is prepared
        col = Xd[:, j]
        ok = ~np.isnan(col)
        rk = _Ranker(col[ok])
        small = (
            np.int32 if max(rk.size, len(ok)) < 2**31 else np.intp
        )  # held for every view: half the memory
        return (
            ok,
            rk.codes.astype(small),
            rk.size,
            None if ok.all() else (np.cumsum(ok) - 1).astype(small),
        )

    live = [int(j) for j in np.flatnonzero(need)]
    rankers = {j: prepare(j) for j in live}
    Xd = None  # the tie groups are all the views need: the n × d values go before the views are built

    def build(i: int) -> _View:
        (_, rows), M, T = groups[i], masks[i], targets[i]
        full = len(rows) == n
        U = np.zeros(
            (len(rows), d)
        )  # written in place (a transposed copy would add n × d floats to the peak)
        miss_cols, present = [], []
        for j in np.flatnonzero(M.any(axis=1)):
            ok, codes, size, okpos = rankers[int(j)]
            okr = ok if full else ok[rows]
            if not okr.all():
                miss_cols.append(int(j))
                present.append(okr)
            if okr.sum() < 2:
                continue
            # `_Ranker.ranks(mask)` over the view's present rows: mid-ranks from the counts of
            # those rows' tie groups (all present rows: `_Ranker.ranks()`)
            sub = codes if full else codes[rows if okpos is None else okpos[rows[okr]]]
            counts = np.bincount(sub, minlength=size)
            r = (np.cumsum(counts) - (counts - 1) / 2.0)[sub]
            r = r - r.mean()  # as refine.scores
            nrm = np.sqrt(np.sum(r * r))
            if nrm > 0:
                if okr.all():
                    U[:, j] = r / nrm
                else:
                    U[okr, j] = r / nrm
        miss = np.asarray(miss_cols, dtype=np.intp)
        Pm = np.column_stack(present).astype("float64") if len(miss) else np.zeros((len(rows), 0))
        pos = np.full(n, -1, dtype="int64")
        pos[rows] = np.arange(len(rows))
        A, Q, N = view_sums(U, Pm, miss)
        return _View(rows, pos, U, miss, Pm, U.T @ U, A, Q, N, T, M)

    return [
        build(i) for i in range(len(groups))
    ]  # one at a time: two views in flight add n × d floats to the peak


def _frozen_columns(cps: list[dict[str, Any]], release: dict[str, Any]) -> set[str]:
    """Columns that never move: strata, ids, groups, and whatever a checkpoint reads outside
    its formula's right-hand side (subset, weights, cluster, entity, time, absorbed effects),
    so estimation samples and weights stay where they are."""
    frozen = set(release["strata"]["columns"])
    frozen |= {c["name"] for c in release["columns"] if c.get("role") in ("id", "group")}
    for c in cps:
        frozen |= set(c.get("subset_columns", []))
        frozen |= set(c["columns"]) - formula_variables(c["formula"])
    return frozen


def _groups(df: pd.DataFrame, release: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(stats block id, row positions) per block: rows of a released stratum cell, and the
    residual rows (strata missing or in no released cell) under the source-level stats."""

    strata = release["strata"]["columns"]
    cells = release["strata"]["cells"]
    if not strata or not cells:
        return [("all", np.arange(len(df)))]
    by_key = {tuple(norm_key(v) for v in cell["key"]): cell["id"] for cell in cells}
    # norm_key per distinct value and combination, not per row (same keys as a per-row map)
    code = np.zeros(len(df), dtype=np.int64)
    keyparts: list[list[Any]] = []
    for st in strata:
        if st in df:
            c, u = pd.factorize(df[st], use_na_sentinel=False)
            keyparts.append([norm_key(v) for v in u])
            code = code * max(len(u), 1) + c
        else:
            keyparts.append([None])
    combos, inv = np.unique(code, return_inverse=True)
    ids_u = []
    for cc in combos:
        key, rem = [], int(cc)
        for parts in reversed(keyparts):
            key.append(parts[rem % len(parts)])
            rem //= len(parts)
        ids_u.append(by_key.get(tuple(reversed(key)), "all"))
    ids = np.asarray(ids_u, dtype=object)[inv.ravel()]
    out = [(cell["id"], np.flatnonzero(ids == cell["id"])) for cell in cells]
    rest = np.flatnonzero(ids == "all")
    if len(rest):
        out.append(("all", rest))
    return [(g, r) for g, r in out if len(r)]


@dataclass(frozen=True)
class AlignSettings:
    """The knobs of `align_moments` (documented there): sweep budget, stopping gains, the
    Spearman tolerance `tau` and its penalty weight `wall`, and the pairs per batch."""

    max_sweeps: int = 40
    min_gain: float = 0.005
    patience: int = 3
    tau: float = 0.03
    wall: float = 100.0
    max_pairs: int | None = None
    target_sweeps: int = 30


def _settle_rule(checkpoints: list[dict[str, Any]]) -> Callable[[_Target], bool]:
    """Whether a checkpoint's design already gives its released SEs (`se_factor_gap` within
    SE_FACTOR_TOL; GLMs and fe within PROXY_FACTOR_TOL; clustered ones within `settle_tol`), so
    it needs no alignment: never for one that shares a linear outcome, nor for re or iv without
    its first stage."""
    # What the alignment is for: nested specifications on one outcome (pinned jointly only when
    # the auxiliary regressions match, so they always align) and SEs (a checkpoint alone on its
    # outcome pins exactly whatever its design; its design sets the SEs through the factors of
    # `se_factor_gap`). One whose factors are all within SE_FACTOR_TOL starts settled: still
    # scored, so it does not drift, but it drives no sweep (on large data, where sampling noise
    # is small, this skips nearly all the work).
    iv_tags = {c["tag"] for c in checkpoints if c["model"] == "iv"}
    outcome_count = Counter(c["outcome"] for c in checkpoints)
    # A discrete outcome's checkpoints are pinned together by their score equations
    # (pin_discrete: within PIN_TOL whatever the auxiliary regressions), so sharing it is no
    # reason to align; each is judged alone as below.
    discrete = {c["outcome"] for c in checkpoints if c["model"] in GLM_MODELS}
    shared = {
        c["tag"]
        for c in checkpoints
        if outcome_count[c["outcome"]] > 1 and c["outcome"] not in discrete
    }
    # The factors are the SEs' own for OLS/WLS and for iv with released instrument moments. For
    # GLMs (likelihood weights) and fe (within moments) they are a proxy, judged at a quarter of
    # the tolerance: the alignment moves only the raw unweighted moments those factors read. re
    # (variance components) and iv without its first stage align as before.
    judged = {c["tag"] for c in checkpoints if c["model"] in ("ols", "iv")}
    proxied = {c["tag"] for c in checkpoints if c["model"] in (*GLM_MODELS, "fe")}

    def fine(target: _Target) -> bool:
        if target.tag in shared or (target.iv is None and target.tag in iv_tags):
            return False
        if target.tag in proxied:
            return target.se_factor_gap() <= settle_tol(PROXY_FACTOR_TOL, target.clusters)
        return target.tag in judged and target.se_factor_gap() <= settle_tol(
            SE_FACTOR_TOL, target.clusters
        )

    return fine


def settle_tol(tol: float, clusters: int | None) -> float:
    """The SE-factor tolerance of a checkpoint: `tol`, or for a clustered vcov over G clusters
    CLUSTER_SHARE of that SE's own precision 1/sqrt(2(G - 1)) when that is wider."""
    if clusters is None or clusters < 2:
        return tol
    return max(tol, CLUSTER_SHARE / np.sqrt(2.0 * (clusters - 1)))


def _build_targets(
    df: pd.DataFrame, checkpoints: list[dict[str, Any]], fine: Callable[[_Target], bool]
) -> tuple[list[_Target], list[str]]:
    """The state of every checkpoint (in checkpoint order) and the notes of those that cannot
    be built. The row evaluators (`_Compiled`) serve the sweeps only: while every target built
    so far is fine, a fine one is built without it (shared ones first, as they never are), and
    only if a later one is not fine are those built again with it."""
    outcome_count = Counter(c["outcome"] for c in checkpoints)
    shared = {c["tag"] for c in checkpoints if outcome_count[c["outcome"]] > 1}
    found: dict[int, tuple[_Target | None, str]] = {}
    deferred: list[int] = []
    need = False
    for i in sorted(range(len(checkpoints)), key=lambda i: checkpoints[i]["tag"] not in shared):
        target, note = _target(df, checkpoints[i], skip=None if need else fine)
        if target is not None and not need:
            if fine(target):
                deferred.append(i)  # built without its evaluator
            else:
                need = True
        found[i] = (target, note)
    if need:
        for i in deferred:
            found[i] = _target(df, checkpoints[i])
    targets: list[_Target] = []
    notes: list[str] = []
    for i in range(len(checkpoints)):
        built, note = found[i]
        if built is None:
            notes.append(note)
        else:
            targets.append(built)
    return targets, notes


def _movable_units(
    df: pd.DataFrame, frozen: set[str], release: dict[str, Any], targets: list[_Target]
) -> dict[str, list[str]]:
    """Columns that move together, keyed by their root: each right-hand-side variable not
    frozen, with the columns derived from it (a derived column moves with its source)."""
    root = {b: d["from"] for b, d in release.get("derived", {}).items()}
    units: dict[str, list[str]] = {}
    for target in targets:
        for var in sorted(target.rhs):
            base = root.get(var, var)
            cols = [base, *sorted(b for b, a in root.items() if a == base)]
            if base in units or any(col in frozen or col not in df.columns for col in cols):
                continue
            units[base] = cols
    return units


def _spearman_views(
    df: pd.DataFrame,
    release: dict[str, Any],
    groups: list[tuple[str, np.ndarray]],
    movable: np.ndarray,
    skip: np.ndarray,
) -> tuple[list[_View | None], _View | None]:
    """The Spearman views of the blocks and (stratified) of the source: the masks and targets
    of `refine._view`, less the pairs of two unmovable dims or of an outcome; a view with no
    pair left is None. Returns (per-block views, the source view or None)."""
    n_dims = len(release["dims"])
    ignore = (~movable[:, None] & ~movable[None, :]) | skip[:, None] | skip[None, :]
    sets = [*groups, ("all", np.arange(len(df)))] if len(groups) > 1 else list(groups)
    masks, tgts = [], []
    for group, _rows in sets:
        released = block_target(release, group)
        mask = np.isfinite(released).astype("float64")
        np.fill_diagonal(mask, 0.0)
        tgts.append(np.where(mask > 0, released, 0.0))
        mask[ignore] = 0.0
        masks.append(mask)
    live = [i for i, mask in enumerate(masks) if n_dims >= 2 and mask.any()]
    # the views build the dim matrix and drop it once its columns are ranked (its n × d floats
    # would add to the memory peak)
    made = (
        _views(
            lambda need: _dim_columns(df, release, need),
            [sets[i] for i in live],
            [masks[i] for i in live],
            [tgts[i] for i in live],
        )
        if live
        else []
    )
    built = dict(zip(live, made, strict=True))
    views = [built.get(i) for i in range(len(groups))]
    source_view = built.get(len(groups)) if len(groups) > 1 else None
    return views, source_view


@dataclass
class _MomentPart:
    """One checkpoint's proposed changes of its running sums (rows `tc`) per swap pair, and
    its moment error before them."""

    target: _Target
    tc: np.ndarray
    dS1: np.ndarray
    dS2: np.ndarray
    base: float


@dataclass
class _SpearmanPart:
    """One Spearman view's proposal terms per swap pair (`refine._proposal_terms`), the
    penalty before them and the block of running sums they change."""

    view: _View
    pos_r: np.ndarray
    pos_s: np.ndarray
    dC: np.ndarray
    dA: np.ndarray
    dQ: np.ndarray
    base: float
    blk: tuple[np.ndarray, ...]


class _Aligner:
    """The sweeps of `align_moments`: swaps of a unit's values between row pairs of a block,
    accepted in batches when they lower the checkpoints' moment errors plus the Spearman
    penalty. `perms[unit]` is the row each row's unit values come from."""

    def __init__(
        self,
        df: pd.DataFrame,
        release: dict[str, Any],
        targets: list[_Target],
        units: dict[str, list[str]],
        outcomes: set[str],
        settings: AlignSettings,
    ):
        self.df, self.targets, self.units, self.settings = df, targets, units, settings
        dims = release["dims"]
        self.n_dims = len(dims)
        es = release.get("entity_structure")
        self.labels = (
            pd.factorize(df[es["column"]])[0] if es and es["column"] in df.columns else None
        )
        self.groups = _groups(df, release)
        self.unit_dims = {
            unit: [j for j, d in enumerate(dims) if d["column"] in cols and d["kind"] != "missing"]
            for unit, cols in units.items()
        }
        movable = np.zeros(self.n_dims, dtype=bool)
        for unit_dims in self.unit_dims.values():
            movable[unit_dims] = True
        skip = np.asarray([d["column"] in outcomes for d in dims], dtype=bool)
        self.views, self.source_view = _spearman_views(df, release, self.groups, movable, skip)
        n = len(df)
        self.perms = {unit: np.arange(n) for unit in units}
        self.owner = {col: unit for unit, cols in units.items() for col in cols}
        self.present = {unit: df[unit].notna().to_numpy() for unit in units}
        self.cells = CellGuard.of(df, release)  # swaps never fill a released empty cell
        # Pairs per batch: a sixteenth of the rows (a correlation moves by O(1/n) per swap, so
        # large data need large batches), bounded so the (pairs × k × k) changes stay small.
        kmax = max(len(t.cols) for t in targets)
        self.cap = settings.max_pairs or int(
            max(512, min(n // 16, 1_500_000 // (kmax * kmax + self.n_dims + 1)))
        )

    def release_views(self) -> None:
        """Drop the views' n × d scores (before the new frame is built: memory peak)."""
        self.views, self.source_view, self.targets = [], None, []

    def spearman_total(self) -> float:
        """Half the Spearman penalty summed over the views (all dims' pairs)."""
        all_dims = list(range(self.n_dims))
        total = 0.0
        for view in [*self.views, self.source_view]:
            if view is not None:
                blk = _block(view, all_dims, np.arange(self.n_dims))
                penalty_now = penalty(blk, 0.0, 0.0, 0.0, self.settings.tau, self.settings.wall)
                total += float(penalty_now) / 2
        return total

    def spearman_max(self) -> float:
        """Largest |Spearman error| over the views."""
        out = 0.0
        for view in [*self.views, self.source_view]:
            if view is not None:
                out = max(out, float(np.max(np.abs(view.error()))))
        return out

    def frame(
        self,
        rows: np.ndarray,
        target: _Target,
        unit: str | None = None,
        other: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """The columns `target` reads at `rows` of the permuted data; with `unit` and `other`,
        that unit's values taken from the rows `other` instead (the swapped state)."""
        data = {}
        for col in target.read:
            owner = self.owner.get(col)
            src = (
                rows
                if owner is None
                else self.perms[owner][other if (owner == unit and other is not None) else rows]
            )
            data[col] = self.df[col].iloc[src].reset_index(drop=True)
        return pd.DataFrame(data)

    def swapped_rows(
        self, target: _Target, unit: str, both: np.ndarray, other: np.ndarray
    ) -> np.ndarray:
        """Centred design rows of `target` at rows `both`: first as they are, then with the
        unit's values of rows `other` (each pair swapped)."""
        if target.compiled is not None:
            idx = {}
            for col in target.read:
                owner = self.owner.get(col)
                if owner is None:
                    idx[col] = np.concatenate([both, both])
                elif owner == unit:
                    idx[col] = np.concatenate([self.perms[unit][both], self.perms[unit][other]])
                else:
                    idx[col] = self.perms[owner][np.concatenate([both, both])]
            return np.nan_to_num(target.compiled.rows(idx), nan=0.0) - target.mean
        frame = pd.concat(
            [self.frame(both, target), self.frame(both, target, unit, other)], ignore_index=True
        )
        return _design_rows(target, frame) - target.mean

    def moment_part(
        self, target: _Target, unit: str, r: np.ndarray, s: np.ndarray
    ) -> tuple[np.ndarray, _MomentPart] | None:
        """The change of `target`'s moment error per swap pair (r[i], s[i]) of the unit's
        values and the running-sum changes behind it; None when no swap changes its design."""
        wr, ws = target.w[r], target.w[s]
        if not (wr.any() or ws.any()):
            return None
        both, other = np.concatenate([r, s]), np.concatenate([s, r])
        rows4 = self.swapped_rows(target, unit, both, other)
        npairs = len(r)
        old, new = rows4[: 2 * npairs], rows4[2 * npairs :]
        # only the design columns that read the unit change (S1, S2 rows tc)
        tc = np.flatnonzero((new != old).any(axis=0))
        if not len(tc):
            return None
        ww = np.concatenate([wr, ws])
        d1 = ww[:, None] * (new[:, tc] - old[:, tc])
        d2 = ww[:, None, None] * (
            new[:, tc, None] * new[:, None, :] - old[:, tc, None] * old[:, None, :]
        )
        dS1, dS2 = d1[:npairs] + d1[npairs:], d2[:npairs] + d2[npairs:]
        S1T, S2T = target.S1[tc], target.S2[tc]
        gain = target.part_error(tc, S1T + dS1, S2T + dS2) - float(target.part_error(tc, S1T, S2T))
        part = _MomentPart(target, tc, dS1, dS2, float(target.error(target.S1, target.S2)))
        return gain, part

    def combined_change(
        self,
        take: np.ndarray,
        mparts: list[_MomentPart],
        sparts: list[_SpearmanPart],
    ) -> float:
        """The joint change of the objective when the swap pairs `take` are all accepted."""
        tau, wall = self.settings.tau, self.settings.wall
        change = 0.0
        for mp in mparts:
            D1, D2 = _expand(len(mp.target.S1), mp.tc, mp.dS1[take].sum(0), mp.dS2[take].sum(0))
            change += float(mp.target.error(mp.target.S1 + D1, mp.target.S2 + D2)) - mp.base
        change += sum(
            float(
                penalty(
                    sp.blk, sp.dC[take].sum(0), sp.dA[take].sum(0), sp.dQ[take].sum(0), tau, wall
                )
            )
            - sp.base
            for sp in sparts
        )
        return change

    def accept(
        self,
        unit: str,
        r: np.ndarray,
        s: np.ndarray,
        take: np.ndarray,
        mparts: list[_MomentPart],
        sparts: list[_SpearmanPart],
    ) -> None:
        """Apply the swap pairs `take`: running sums, Spearman views and the unit's rows."""
        unit_dims = self.unit_dims[unit]
        out_dims = np.flatnonzero(~np.isin(np.arange(self.n_dims), unit_dims))
        for mp in mparts:
            D1, D2 = _expand(len(mp.target.S1), mp.tc, mp.dS1[take].sum(0), mp.dS2[take].sum(0))
            mp.target.S1 = mp.target.S1 + D1
            mp.target.S2 = mp.target.S2 + D2
        for sp in sparts:
            accept_swaps(
                sp.view,
                sp.pos_r[take],
                sp.pos_s[take],
                unit_dims,
                out_dims,
                sp.dC[take].sum(0),
                sp.dA[take].sum(0),
                sp.dQ[take].sum(0),
            )
        perm = self.perms[unit]
        rr, ss = r[take], s[take]
        perm[rr], perm[ss] = perm[ss].copy(), perm[rr].copy()

    def _perm_of(self, col: str) -> np.ndarray | None:
        owner = self.owner.get(col)
        return None if owner is None else self.perms[owner]

    def batch(
        self,
        unit: str,
        affected: list[_Target],
        rows: np.ndarray,
        block_view: _View | None,
        rng: np.random.Generator,
    ) -> bool:
        """One batch of swaps of the unit's values among `rows` of a block: draw pairs, score
        each, accept the best prefix that lowers the objective jointly. True when any moved."""
        order = rows[rng.permutation(len(rows))]
        half = min(len(order) // 2, self.cap)
        r, s = draw_pairs(order, half, self.labels)
        npairs = len(r)
        if not npairs:
            return False
        tau, wall = self.settings.tau, self.settings.wall
        gain = np.zeros(npairs)
        mparts: list[_MomentPart] = []
        for target in affected:
            scored = self.moment_part(target, unit, r, s)
            if scored is not None:
                gain += scored[0]
                mparts.append(scored[1])
        sparts: list[_SpearmanPart] = []
        unit_dims = self.unit_dims[unit]
        if unit_dims:
            out_dims = np.flatnonzero(~np.isin(np.arange(self.n_dims), unit_dims))
            for view in (block_view, self.source_view):
                if (
                    view is None
                    or not view.M[np.ix_(np.asarray(unit_dims, dtype=np.intp), out_dims)].any()
                ):
                    continue
                pos_r, pos_s, dC, dA, dQ = _proposal_terms(view, r, s, unit_dims, out_dims)
                blk = _block(view, unit_dims, out_dims)
                base = float(penalty(blk, 0.0, 0.0, 0.0, tau, wall))
                gain += penalty(blk, dC, dA, dQ, tau, wall) - base
                sparts.append(_SpearmanPart(view, pos_r, pos_s, dC, dA, dQ, base, blk))
        if self.cells is not None:
            gain[~self.cells.allowed(self.units[unit], self._perm_of, r, s)] = 0.0
        cand = np.flatnonzero(gain < -1e-15)
        if not len(cand):
            return False
        cand = cand[np.argsort(gain[cand], kind="stable")]
        best_m, _ = best_prefix(lambda m: self.combined_change(cand[:m], mparts, sparts), len(cand))
        if best_m == 0:
            return False
        self.accept(unit, r, s, cand[:best_m], mparts, sparts)
        return True

    def sweep(self, settled: np.ndarray, rng: np.random.Generator) -> bool:
        """One pass over the units and blocks (units feeding only settled checkpoints stay);
        True when any swap was accepted."""
        improved = False
        for unit, cols in self.units.items():
            live = [i for i, t in enumerate(self.targets) if set(cols) & t.rhs]
            if not live or settled[live].all():
                continue
            affected = [self.targets[i] for i in live]
            for (_group, group_rows), block_view in zip(self.groups, self.views, strict=True):
                rows = group_rows[self.present[unit][group_rows]]
                if len(rows) < 4:
                    continue
                if self.batch(unit, affected, rows, block_view, rng):
                    improved = True
        return improved

    def run(
        self, fine: Callable[[_Target], bool], rng: np.random.Generator
    ) -> tuple[int, np.ndarray, list[float]]:
        """Sweep until the objective or the moments stop gaining, or every checkpoint is
        settled. Returns (sweeps, settled per target, objective per sweep)."""
        knobs = self.settings
        prev = prev_moments = np.inf
        flat = 0
        target_prev = np.full(len(self.targets), np.inf)
        target_flat = np.zeros(len(self.targets), dtype=int)
        settled = np.zeros(len(self.targets), dtype=bool)
        trace: list[float] = []
        stale = 0
        sweeps = 0
        for _ in range(knobs.max_sweeps):
            # Stop when a sweep gains less than `min_gain` of the objective (relative), or when
            # the design moments themselves have gained less than that for `patience` sweeps
            # running: the Spearman penalty is a constraint here (the refinement's own job) and
            # chasing its slow gains alone cost many sweeps without moving the moments.
            # Per checkpoint: part of its moment error is out of reach (shares of factor levels
            # are fixed by the marginals), so one that stalls stops driving sweeps on its own.
            target_err = np.asarray([float(t.error(t.S1, t.S2)) for t in self.targets])
            target_flat = np.where(
                target_prev - target_err < knobs.min_gain * target_prev, target_flat + 1, 0
            )
            settled |= (
                (target_flat >= knobs.patience)
                | (target_err <= 1e-15)
                | (sweeps >= knobs.target_sweeps)
                | np.asarray([fine(t) for t in self.targets])
            )
            target_prev = target_err
            moments = float(target_err.sum())
            total = moments + self.spearman_total()
            trace.append(total)
            if total <= 1e-15 or prev - total < knobs.min_gain * prev or settled.all():
                break
            flat = flat + 1 if prev_moments - moments < knobs.min_gain * prev_moments else 0
            if flat >= knobs.patience:
                break
            prev, prev_moments = total, moments
            sweeps += 1
            stale = 0 if self.sweep(settled, rng) else stale + 1
            if stale >= knobs.patience:
                break
        return sweeps, settled, trace


def align_moments(
    df: pd.DataFrame,
    checkpoints: list[CheckpointRecord],
    release: SourceRelease,
    rng: np.random.Generator,
    settings: AlignSettings | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Reorder regressor values within blocks so each released checkpoint's design moments
    on the synthetic data approach the released ones, keeping the released Spearman matrices
    (block and source) within `tau` where they were (penalty). Returns a new frame (only
    regressor columns permuted) and a report with the gaps before and after per checkpoint.
    A checkpoint is settled once its own moments gained less than `min_gain` (relative) for
    `patience` sweeps running, or after `target_sweeps` sweeps; a unit moves only while a
    checkpoint it feeds is unsettled (settled ones are still scored, so they do not drift).
    The knobs (`tau`, `min_gain`, ...) are `settings` (default `AlignSettings()`).
    `rng`: `seeds.rng(seed, source, "xmom")`."""
    settings = settings if settings is not None else AlignSettings()
    source = release["source"]
    released = [
        untyped(c)
        for c in checkpoints
        if c.get("status") == "released" and c["source"] == source and c.get("moments")
    ]
    release_record = untyped(release)
    report: dict[str, Any] = {"source": source, "checkpoints": {}, "notes": []}
    if not released or len(df) < 4:
        report["status"] = "nothing to align"
        return df, report
    fine = _settle_rule(released)
    # When all are fine (the usual case on large data) no row evaluator is compiled.
    targets, notes = _build_targets(df, released, fine)
    report["notes"].extend(notes)
    if targets and all(fine(t) for t in targets):
        report["checkpoints"] = {t.tag: {"before": t.gaps(), "after": t.gaps()} for t in targets}
        report.update(
            status="within tolerance",
            sweeps=0,
            settled=[t.tag for t in targets],
            objective=[],
            moved=[],
        )
        return df, report
    # Entity structure (replisynth.synthesize.entities): time-invariant columns never move and
    # swaps stay inside an entity, so within-entity constancy and between shares survive.
    frozen = _frozen_columns(released, release_record) | entity_frozen(release_record)
    units = _movable_units(df, frozen, release_record, targets)
    if not targets or not units:
        report["status"] = "nothing to align"
        return df, report
    # Outcomes of maximum-likelihood checkpoints keep their released rank relations to the
    # regressors in the penalty: their pin changes few of the drawn values, so a relation the
    # reordering broke (a count's zero split against its regressors) would stay broken. A
    # linear pin rebuilds its outcome's relation to the design; those pairs are left out.
    moved_cols = set(units) | {b for cols in units.values() for b in cols}
    discrete = {c["outcome"] for c in released if c["model"] in GLM_MODELS}
    outcomes = {c["outcome"] for c in released} - moved_cols - discrete
    aligner = _Aligner(df, release_record, targets, units, outcomes, settings)
    before = {t.tag: t.gaps() for t in targets}
    sp_before = aligner.spearman_max()
    sweeps, settled, trace = aligner.run(fine, rng)
    sp_after = aligner.spearman_max()
    settled_tags = [t.tag for t, done in zip(targets, settled, strict=True) if done]
    # The gaps after alignment from the running sums, which track the permuted design exactly
    # (up to rounding of the accumulated changes): rebuilding every design on the new frame
    # costs time and memory per checkpoint.
    for t in targets:
        report["checkpoints"][t.tag] = {"before": before[t.tag], "after": t.gaps()}
    aligner.release_views()
    # copy-on-write (pandas >= 3): unmoved columns are shared, never written through
    out = df.copy(deep=False)
    for unit, cols in units.items():
        for col in cols:
            out[col] = df[col].take(aligner.perms[unit]).set_axis(df.index)
    report.update(
        status="aligned",
        sweeps=sweeps,
        settled=settled_tags,
        objective=trace,
        moved=sorted(units),
        spearman_max_error_before=sp_before,
        spearman_max_error_after=sp_after,
    )
    return out, report
