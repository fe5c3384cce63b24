"""Derived columns (`sources.<name>.derive`) recomputed from their inputs after pinning, so each
declared identity holds in every synthetic row. Method: docs/method.md, "Derived columns".
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from replisynth.config.formula_grammar import (
    ParsedDerive,
    derive_values,
    evaluate,
    parse_derive,
)
from replisynth.core.errors import BundleError

# f -> its inverse, for the one-input expressions a pinned derived outcome is solved through
_INVERSE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.exp,
    "log10": lambda v: np.power(10.0, v),
    "log2": np.exp2,
    "log1p": np.expm1,
    "exp": np.log,
    "exp2": np.log2,
    "expm1": np.log1p,
    "sqrt": np.square,
    "I": lambda v: v,
}


@dataclass(frozen=True)
class DerivedNote:
    """What recomputation did to one derived column (names only, no values)."""

    column: str
    action: str  # recomputed | solved (the input follows a pinned derived outcome)
    input: str | None = None

    def text(self) -> str:
        if self.action == "solved":
            return (
                f"derived {self.column}: a pinned outcome; its input {self.input} was solved "
                "from it, so the identity and the pin both hold"
            )
        return f"derived {self.column}: recomputed from its inputs"


def _column_names(node: ast.AST) -> list[ast.Name]:
    """The column references of a checked expression (a called function's name is not one)."""
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    return [n for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in called]


def _has_column(node: ast.AST) -> bool:
    return bool(_column_names(node))


def _solve(node: ast.AST, v: np.ndarray, const: Callable[[ast.AST], float]) -> np.ndarray | None:
    """Invert a one-column expression at `v`: the input column's values, or None when the
    expression is not a chain of invertible steps (+ - * / by constants, unary minus, logs,
    exponentials, sqrt)."""
    if isinstance(node, ast.Name):
        return v
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _solve(node.operand, -v if isinstance(node.op, ast.USub) else v, const)
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        if name in _INVERSE and len(node.args) == 1:
            with np.errstate(all="ignore"):
                return _solve(node.args[0], _INVERSE[name](v), const)
        return None
    if isinstance(node, ast.BinOp) and _has_column(node.left) != _has_column(node.right):
        return _solve_binop(node, v, const)
    return None


def _solve_binop(
    node: ast.BinOp, v: np.ndarray, const: Callable[[ast.AST], float]
) -> np.ndarray | None:
    left = _has_column(node.left)
    k = const(node.right if left else node.left)
    with np.errstate(all="ignore"):
        if isinstance(node.op, ast.Add):
            return _solve(node.left if left else node.right, v - k, const)
        if isinstance(node.op, ast.Sub):
            return _solve(node.left, v + k, const) if left else _solve(node.right, k - v, const)
        if isinstance(node.op, ast.Mult) and k != 0:
            return _solve(node.left if left else node.right, v / k, const)
        if isinstance(node.op, ast.Div) and left and k != 0:
            return _solve(node.left, v * k, const)
    return None


def solve_input(parsed: ParsedDerive, values: np.ndarray) -> np.ndarray | None:
    """The values of the single input column for which the expression gives `values`, or None
    (several inputs, or a step that cannot be inverted)."""
    if len(parsed.columns) != 1:
        return None
    tree = parsed.tree
    if len(_column_names(tree)) != 1:
        return None

    def const(node: ast.AST) -> float:
        return float(evaluate(node, lambda c: np.nan))  # type: ignore[arg-type]

    try:
        return _solve(tree, np.asarray(values, dtype="float64"), const)
    except (ValueError, TypeError, SyntaxError):
        return None


def _store(values: np.ndarray, like: pd.Series, round_integers: bool = False) -> pd.Series:
    """`values` in the dtype of the column they replace (an integer or 0/1 column stays one;
    a missing value in an integer column makes it float, and so does a non-integer value
    unless `round_integers`: a derived column's identity wins over its storage, a solved
    input keeps its storage)."""
    s = pd.Series(values, index=like.index, name=like.name)
    if pd.api.types.is_bool_dtype(like.dtype) and not s.isna().any():
        return s.astype(bool)
    if pd.api.types.is_integer_dtype(like.dtype):
        fractional = not np.allclose(s, s.round(), rtol=0, atol=1e-9)
        if s.isna().any() or (fractional and not round_integers):
            return s.astype(
                "Float64" if isinstance(like.dtype, pd.api.extensions.ExtensionDtype) else "float64"
            )
        return s.round().astype(like.dtype)
    if pd.api.types.is_float_dtype(like.dtype):
        return s.astype(like.dtype)
    return s


def recompute_derived(
    df: pd.DataFrame, derive: tuple[tuple[str, str], ...], pinned: set[str] | frozenset[str]
) -> tuple[pd.DataFrame, list[DerivedNote]]:
    """`df` with every derived column recomputed from its inputs. A derived column that is a
    pinned outcome with one invertible input keeps its pinned values and the input is solved
    from them instead (then the column is recomputed from the stored input)."""
    out = df.copy()
    notes = []
    for col, text in derive:
        key = f"derive.{col}"
        parsed = parse_derive(text, key, BundleError)
        only = next(iter(parsed.columns)) if len(parsed.columns) == 1 else None
        solved = None
        if col in pinned and only is not None and only not in pinned:
            solved = solve_input(
                parsed, pd.to_numeric(out[col]).to_numpy("float64", na_value=np.nan)
            )
        if solved is not None and only is not None:
            out[only] = _store(solved, out[only], round_integers=True)
            notes.append(DerivedNote(col, "solved", only))
        else:
            notes.append(DerivedNote(col, "recomputed"))
        out[col] = _store(derive_values(out, parsed, key, BundleError), out[col])
    return out, notes
