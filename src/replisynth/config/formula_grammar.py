"""The safe grammar of checkpoint formulas and subsets: text is parsed and checked node by
node before anything evaluates it. Grammar: docs/grammar.md; docs/method.md, "Formula grammar".
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from replisynth.core.errors import ManifestError, ReplisynthError

# numpy functions a formula or subset may call (also spelt np.<name>); each maps arrays to arrays
NUMPY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "exp": np.exp,
    "exp2": np.exp2,
    "expm1": np.expm1,
    "floor": np.floor,
    "log": np.log,
    "log10": np.log10,
    "log1p": np.log1p,
    "log2": np.log2,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "power": np.power,
    "sign": np.sign,
    "sqrt": np.sqrt,
    "square": np.square,
}
_ARITY = {"power": 2, "maximum": 2, "minimum": 2}
# C()'s contrasts (formulaic's patsy-compatible spellings)
CONTRASTS = ("Treatment", "Sum", "Helmert", "Diff", "Poly")
FORMULA_FUNCTIONS = ("C", "I", *NUMPY_FUNCTIONS)
SUBSET_METHODS = ("isin", "isna", "notna")
_OPERATORS = ("**", "~", "+", "-", "*", "/", ":", "^")
_ARITH = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_PLACEHOLDER = (
    "__q{}__"  # a backtick-quoted name inside Python code; user names never start with __
)


class GrammarError(ManifestError):
    """A formula or subset outside the safe grammar (raised re-typed for the caller's file)."""


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(key: str, token: str, why: str, error: type[ReplisynthError]) -> ReplisynthError:
    prefix = f"{key}: " if key else ""
    return error(
        f"{prefix}{why} {_short(token)!r} is not allowed; see the formula grammar (docs/grammar.md)"
    )


# ---------------------------------------------------------------------------------------------
# Python expressions (inside formula calls, and subsets)


@dataclass
class _Checker:
    """Validates an `ast` expression node by node; collects the column names it reads."""

    key: str
    error: type[ReplisynthError]
    quoted: dict[str, str]  # placeholder -> backtick-quoted column name
    subset: bool = False

    def __post_init__(self) -> None:
        self.columns: set[str] = set()

    def fail(self, node: ast.AST | str, why: str) -> ReplisynthError:
        token = node if isinstance(node, str) else ast.unparse(node)
        for ph, name in self.quoted.items():
            token = token.replace(ph, f"`{name}`")
        return _fail(self.key, token, why, self.error)

    def column(self, node: ast.Name) -> str:
        name = self.quoted.get(node.id, node.id)
        if node.id not in self.quoted and node.id.startswith("__"):
            raise self.fail(node, "the double-underscore name")
        self.columns.add(name)
        return name

    def expr(self, node: ast.AST) -> None:
        """A value per row: columns, numbers, arithmetic, comparisons, boolean operators and
        allow-listed calls."""
        if isinstance(node, ast.Name):
            self.column(node)
        elif isinstance(node, ast.Constant):
            self.literal(node)
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            self.expr(node.left)
            self.expr(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(
            node.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)
        ):
            self.expr(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self.expr(v)
        elif isinstance(node, ast.Compare):
            self.compare(node)
        elif isinstance(node, ast.Call):
            self.call(node)
        elif isinstance(node, ast.Attribute):
            raise self.fail(node, "attribute access")
        else:
            raise self.fail(node, "the expression")

    def literal(self, node: ast.Constant) -> None:
        """Numbers and true/false (subsets: also text)."""
        ok = (int, float, bool, str) if self.subset else (int, float, bool)
        if not isinstance(node.value, ok):
            raise self.fail(node, "the literal")

    def compare(self, node: ast.Compare) -> None:
        """Comparisons of values (subsets: also `in`/`not in` a list of literals)."""
        self.expr(node.left)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if self.subset and isinstance(op, (ast.In, ast.NotIn)):
                self.literal_list(right)
            elif isinstance(op, _COMPARE):
                self.expr(right)
            else:
                raise self.fail(node, "the comparison")

    def literal_list(self, node: ast.AST) -> None:
        if not isinstance(node, (ast.List, ast.Tuple)) or not all(
            isinstance(e, ast.Constant) and isinstance(e.value, (int, float, bool, str))
            for e in node.elts
        ):
            raise self.fail(node, "a list of literal values is expected here:")

    def function_name(self, node: ast.Call) -> str:
        """The allow-listed name a call calls: `f` or `np.f`; anything else fails."""
        f = node.func
        if isinstance(f, ast.Name) and f.id not in self.quoted:
            return f.id
        if (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "np"
            and f.attr in NUMPY_FUNCTIONS
        ):
            return f.attr
        if (
            self.subset
            and isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.attr in SUBSET_METHODS
        ):
            return "." + f.attr
        raise self.fail(f, "calling")

    def call(self, node: ast.Call) -> None:
        name = self.function_name(node)
        if name.startswith("."):  # subset methods on a bare column: x.isin([...]), x.isna()
            self.column(node.func.value)  # type: ignore[attr-defined]
            want = 1 if name == ".isin" else 0
            if node.keywords or len(node.args) != want:
                raise self.fail(node, f"{name[1:]} takes {want} argument(s);")
            if want:
                self.literal_list(node.args[0])
            return
        if name in NUMPY_FUNCTIONS or (name == "I" and not self.subset):
            want = _ARITY.get(name, 1)
            if (
                node.keywords
                or len(node.args) != want
                or any(isinstance(a, ast.Starred) for a in node.args)
            ):
                raise self.fail(node, f"{name}() takes {want} positional argument(s);")
            for a in node.args:
                self.expr(a)
            return
        raise self.fail(node.func, "calling")

    def factor_call(self, node: ast.Call) -> None:
        """A call at the top of a formula term: C(...) with its options, or any expression call."""
        if isinstance(node.func, ast.Name) and node.func.id == "C" and "C" not in self.quoted:
            self.c_call(node)
        else:
            self.call(node)

    def c_call(self, node: ast.Call) -> None:
        if not 1 <= len(node.args) <= 2 or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "C() takes a column and optionally a contrast;")
        self.expr(node.args[0])
        if len(node.args) == 2:
            self.contrast(node.args[1])
        for kw in node.keywords:
            if kw.arg == "levels":
                self.literal_list(kw.value)
            elif kw.arg == "contrasts":
                self.contrast(kw.value)
            elif (
                kw.arg == "spans_intercept"
                and isinstance(kw.value, ast.Constant)
                and isinstance(kw.value.value, bool)
            ):
                pass
            else:
                raise self.fail(kw.value if kw.arg else node, f"the C() option {kw.arg or '**'}=")

    def contrast(self, node: ast.AST) -> None:
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in CONTRASTS
        ):
            raise self.fail(node, f"the contrast (use one of {', '.join(CONTRASTS)})")
        args = list(node.args) + [k.value for k in node.keywords]
        names_ok = all(k.arg == "reference" for k in node.keywords)
        if node.func.id != "Treatment" and args or len(args) > 1 or not names_ok:
            raise self.fail(node, "the contrast options")
        for a in args:
            if not (isinstance(a, ast.Constant) and isinstance(a.value, (int, float, str, bool))):
                raise self.fail(a, "a literal reference level is expected here:")


def _quote_backticks(
    text: str, key: str, error: type[ReplisynthError]
) -> tuple[str, dict[str, str]]:
    """`text` with each backtick-quoted name replaced by a placeholder identifier."""
    quoted: dict[str, str] = {}
    parts = text.split("`")
    if len(parts) % 2 == 0:
        raise error(
            f"{key}: an unclosed backtick in {_short(text)!r}; quote a column name as `my column`"
        )
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            if not part:
                raise _fail(key, "``", "the empty name", error)
            ph = next((p for p, n in quoted.items() if n == part), None) or _PLACEHOLDER.format(
                len(quoted)
            )
            quoted[ph] = part
            out.append(f" {ph} ")
        else:
            out.append(part)
    return "".join(out), quoted


def _parse_python(
    text: str, key: str, error: type[ReplisynthError], what: str
) -> tuple[ast.expr, dict[str, str]]:
    if "\\" in text or "\n" in text or "\r" in text:
        raise _fail(key, text, "a backslash or line break in", error)
    if "@" in text:
        raise _fail(
            key,
            "@" + text.split("@", 1)[1].split()[0] if text.split("@", 1)[1].split() else "@",
            "the @ variable",
            error,
        )
    src, quoted = _quote_backticks(text, key, error)
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError:
        raise error(
            f"{key}: cannot parse {what} {_short(text)!r}; see the formula grammar (docs/grammar.md)"
        ) from None
    return tree.body, quoted


# ---------------------------------------------------------------------------------------------
# formulas


@dataclass(frozen=True)
class Token:
    kind: str  # name, call, number, op, open, close
    text: str
    start: int


def _call_end(formula: str, i: int) -> int:
    """End of a Python span starting at a `(` or `[` at position i, nested as formulaic nests it
    (brackets and backticks only: quotes do not protect brackets inside a call)."""
    stack: list[str] = []
    while i < len(formula):
        ch = formula[i]
        if stack and stack[-1] == "`":
            if ch == "`":
                stack.pop()
        elif stack and ch == stack[-1]:
            stack.pop()
        elif ch in "([":
            stack.append(")" if ch == "(" else "]")
        elif ch == "`":
            stack.append("`")
        i += 1
        if not stack:
            if (
                i < len(formula) and formula[i] in "(["
            ):  # formulaic keeps f(x)(y) and f(x)[0] in one span
                continue
            return i
    return -1


def _quoted_token(
    formula: str, i: int, key: str, error: type[ReplisynthError]
) -> tuple[Token, int]:
    """The backtick-quoted name starting at position i, and the position after it."""
    j = formula.find("`", i + 1)
    if j < 0:
        raise error(
            f"{key}: an unclosed backtick in {_short(formula)!r}; quote a column name as `my column`"
        )
    name = formula[i + 1 : j]
    if not name or "\\" in name:
        raise _fail(key, formula[i : j + 1], "the quoted name", error)
    if name.strip() in ("0", "1"):  # formulaic reads `1` as the intercept, dropping the column
        raise error(
            f"{key}: the column `{name}` reads as the intercept term {name.strip()} in a formula, "
            "even quoted; rename the column in the data"
        )
    return Token("name", name, i), j + 1


def _word_end(formula: str, i: int) -> int:
    """End of the run of word characters and dots starting at position i."""
    j = i
    while j < len(formula) and re.match(r"[\w.]", formula[j]):
        j += 1
    return j


def _number_token(
    formula: str, i: int, key: str, error: type[ReplisynthError]
) -> tuple[Token, int]:
    """The whole number starting at position i (nothing else is a number here)."""
    j = _word_end(formula, i)
    if not formula[i:j].isdigit():
        raise _fail(key, formula[i:j], "the number", error)
    return Token("number", formula[i:j], i), j


def _word_token(formula: str, i: int, key: str, error: type[ReplisynthError]) -> tuple[Token, int]:
    """The name starting at position i, or with its brackets the call it starts."""
    j = _word_end(formula, i)
    if j < len(formula) and formula[j] in "([":
        end = _call_end(formula, j)
        if end < 0:
            raise error(f"{key}: unbalanced brackets after {formula[i:j]!r} in {_short(formula)!r}")
        return Token("call", formula[i:end], i), end
    return Token("name", formula[i:j], i), j


def _symbol_token(
    formula: str, i: int, key: str, error: type[ReplisynthError]
) -> tuple[Token, int]:
    """The bracket or operator at position i; any other character is refused."""
    ch = formula[i]
    if ch in "([":
        return Token("open", ch, i), i + 1
    if ch in ")]":
        return Token("close", ch, i), i + 1
    op = next((o for o in _OPERATORS if formula.startswith(o, i)), None)
    if op is None:
        raise _fail(key, ch, "the character", error)
    return Token("op", op, i), i + len(op)


def tokenize_formula(
    formula: str, key: str = "", error: type[ReplisynthError] = ManifestError
) -> list[Token]:
    """The formula's tokens, cut where formulaic cuts them; characters formulaic would read as
    Python blocks, string values or operators it has and this grammar has not are refused."""
    out: list[Token] = []
    i, n = 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "`":
            token, i = _quoted_token(formula, i, key, error)
        elif ch.isdigit():
            token, i = _number_token(formula, i, key, error)
        elif re.match(r"[^\W\d]", ch):
            token, i = _word_token(formula, i, key, error)
        else:
            token, i = _symbol_token(formula, i, key, error)
        out.append(token)
    return out


@dataclass(frozen=True)
class ParsedFormula:
    """A formula that passed the grammar: its column names and the functions it calls."""

    text: str
    columns: frozenset[str]
    functions: frozenset[str]
    outcome: str


class _FormulaParser:
    """Recursive descent over the Wilkinson operators; each call token goes to `_Checker`."""

    def __init__(self, formula: str, key: str, error: type[ReplisynthError]):
        self.formula, self.key, self.error = formula, key, error
        self.toks = tokenize_formula(formula, key, error)
        self.pos = 0
        self.columns: set[str] = set()
        self.functions: set[str] = set()
        self.brackets = 0

    def peek(self) -> Token | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error(
                f"{self.key}: cannot parse formula {_short(self.formula)!r}: it ends too early; write 'y ~ x1 + x2'"
            )
        self.pos += 1
        return tok

    def expect(self, kind: str, text: str) -> None:
        tok = self.take()
        if tok.kind != kind or tok.text != text:
            raise self.unexpected(tok, f"; expected {text!r}")

    def unexpected(self, tok: Token, hint: str = "") -> ReplisynthError:
        return self.error(
            f"{self.key}: cannot parse formula {_short(self.formula)!r}: unexpected {_short(tok.text)!r}"
            f" at position {tok.start + 1}{hint}; see the formula grammar (docs/grammar.md)"
        )

    def parse(self) -> ParsedFormula:
        lhs = self.take()
        if lhs.kind != "name":
            raise _fail(
                self.key, lhs.text, "the left-hand side must be one column name;", self.error
            )
        self.name(lhs)
        self.expect("op", "~")
        self.sum(top=True)
        if self.peek() is not None:
            raise self.unexpected(self.peek())  # type: ignore[arg-type]
        return ParsedFormula(
            self.formula, frozenset(self.columns), frozenset(self.functions), lhs.text
        )

    def sum(self, top: bool = False) -> None:
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text in "+-":
            self.take()
        self.product(top)
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text in ("+", "-"):
            self.take()
            self.product(top)

    def product(self, top: bool) -> None:
        self.interaction(top)
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text in ("*", "/"):
            self.take()
            self.interaction(top)

    def interaction(self, top: bool) -> None:
        self.power(top)
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text == ":":
            self.take()
            self.power(top)

    def power(self, top: bool) -> None:
        self.atom(top)
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text in ("**", "^"):
            self.take()
            exp = self.take()
            if exp.kind != "number":
                raise _fail(
                    self.key, exp.text, "the power of a term must be a whole number;", self.error
                )

    def name(self, tok: Token) -> None:
        if tok.text.startswith("__") or tok.text in (
            "in",
            "not",
            "and",
            "or",
            "is",
            "if",
            "else",
            "lambda",
        ):
            raise _fail(self.key, tok.text, "the name", self.error)
        self.columns.add(tok.text)

    def atom(self, top: bool) -> None:
        tok = self.take()
        if tok.kind == "name":
            self.name(tok)
        elif tok.kind == "number":
            if tok.text not in ("0", "1"):
                raise _fail(
                    self.key,
                    tok.text,
                    "the number (a term may be 0 or 1, the intercept)",
                    self.error,
                )
        elif tok.kind == "call":
            self.call(tok)
        elif tok.kind == "open" and tok.text == "(":
            self.sum()
            self.expect("close", ")")
        elif tok.kind == "open" and tok.text == "[" and top and self.brackets == 0:
            self.brackets += 1
            self.sum()
            self.expect("op", "~")
            self.sum()
            self.expect("close", "]")
        else:
            raise self.unexpected(tok)

    def call(self, tok: Token) -> None:
        node, quoted = _parse_python(tok.text, self.key, self.error, "the term")
        for name in quoted.values():
            if keyword.iskeyword(name):  # formulaic cannot parse it inside a call, even quoted
                raise self.error(
                    f"{self.key}: the column {name!r} is named like a Python keyword and cannot be "
                    f"used inside {_short(tok.text)!r}; rename the column in the data"
                )
        checker = _Checker(self.key, self.error, quoted)
        if not isinstance(node, ast.Call):
            raise checker.fail(node, "the term")
        checker.factor_call(node)
        self.columns |= checker.columns
        self.functions |= {
            n.func.id if isinstance(n.func, ast.Name) else ast.unparse(n.func)
            for n in ast.walk(node)
            if isinstance(n, ast.Call)
        }


@lru_cache(maxsize=1024)
def _parse_formula_cached(formula: str) -> ParsedFormula:
    return _FormulaParser(formula, "\x00", GrammarError).parse()


def _keyed(exc: GrammarError, key: str, error: type[ReplisynthError]) -> ReplisynthError:
    """A cached parse's error (its key left as a placeholder) as `error` naming `key`."""
    return error(str(exc).replace("\x00: ", f"{key}: " if key else "").replace("\x00", key))


def parse_formula(
    formula: Any, key: str = "", error: type[ReplisynthError] = ManifestError
) -> ParsedFormula:
    """Check a checkpoint formula against the grammar; raise `error` naming `key` and the
    offending token."""
    if not isinstance(formula, str):
        raise error(f"{key}: expected a formula string, got {type(formula).__name__}")
    try:
        return _parse_formula_cached(formula)
    except GrammarError as exc:
        raise _keyed(exc, key, error) from None


def formula_columns(
    formula: str, key: str = "", error: type[ReplisynthError] = ManifestError
) -> set[str]:
    """Every data column a formula reads (outcome included)."""
    return set(parse_formula(formula, key, error).columns)


# ---------------------------------------------------------------------------------------------
# subsets


@dataclass(frozen=True)
class ParsedSubset:
    text: str
    tree: ast.expr
    quoted: dict[str, str]
    columns: frozenset[str]


def _pandas_booleans(src: str) -> str:
    """pandas-query spelling: `&` and `|` bind like `and` and `or` (pandas rewrites them so)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return src
    out = []
    for t in toks:
        if t.type == tokenize.OP and t.string in ("&", "|"):
            out.append((tokenize.NAME, "and" if t.string == "&" else "or"))
        else:
            out.append((t.type, t.string))
    return tokenize.untokenize(out)


@lru_cache(maxsize=1024)
def _parse_subset_cached(subset: str) -> ParsedSubset:
    key, error = "\x00", GrammarError
    if "\\" in subset or "\n" in subset or "\r" in subset:
        raise _fail(key, subset, "a backslash or line break in", error)
    if "@" in subset:
        word = subset.split("@", 1)[1].split()
        raise _fail(key, "@" + (word[0] if word else ""), "the @ variable", error)
    src, quoted = _quote_backticks(subset, key, error)
    try:
        tree = ast.parse(_pandas_booleans(src.strip()).strip(), mode="eval").body
    except SyntaxError:
        raise error(
            f'{key}: cannot parse subset {_short(subset)!r}; write a condition such as "year == 1978 and age >= 18"'
        ) from None
    checker = _Checker(key, error, quoted, subset=True)
    checker.expr(tree)
    if not checker.columns:
        raise error(
            f'{key}: subset {_short(subset)!r} names no column; write a condition on columns such as "age >= 18"'
        )
    return ParsedSubset(subset, tree, quoted, frozenset(checker.columns))


def parse_subset(
    subset: Any, key: str = "", error: type[ReplisynthError] = ManifestError
) -> ParsedSubset:
    """Check a subset condition against the grammar; raise `error` naming `key` and the token."""
    if not isinstance(subset, str):
        raise error(f"{key}: expected a condition string, got {type(subset).__name__}")
    try:
        return _parse_subset_cached(subset)
    except GrammarError as exc:
        raise _keyed(exc, key, error) from None


# ---------------------------------------------------------------------------------------------
# derived columns (sources.<name>.derive)


@dataclass(frozen=True)
class ParsedDerive:
    text: str
    tree: ast.expr
    quoted: dict[str, str]
    columns: frozenset[str]


@lru_cache(maxsize=1024)
def _parse_derive_cached(expression: str) -> ParsedDerive:
    key, error = "\x00", GrammarError
    tree, quoted = _parse_python(expression, key, error, "the expression")
    checker = _Checker(key, error, quoted)
    checker.expr(tree)
    if not checker.columns:
        raise error(
            f'{key}: expression {_short(expression)!r} names no column; write e.g. "log(wage)"'
        )
    return ParsedDerive(expression, tree, quoted, frozenset(checker.columns))


def parse_derive(
    expression: Any, key: str = "", error: type[ReplisynthError] = ManifestError
) -> ParsedDerive:
    """Check a derived column's expression: columns, numbers, arithmetic, comparisons,
    boolean operators and the allow-listed numpy functions (no strings, no `I()` needed)."""
    if not isinstance(expression, str):
        raise error(f"{key}: expected an expression string, got {type(expression).__name__}")
    try:
        return _parse_derive_cached(expression)
    except GrammarError as exc:
        raise _keyed(exc, key, error) from None


def derive_values(
    df: pd.DataFrame, parsed: ParsedDerive, key: str, error: type[ReplisynthError] = ManifestError
) -> np.ndarray:
    """A checked derive expression over `df` as float64 (comparisons give 0/1); a row with a
    missing input gives a missing value (NaN), whatever the operator would say."""
    cols = {
        c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype="float64") for c in parsed.columns
    }
    try:
        with np.errstate(all="ignore"):
            out = evaluate(parsed.tree, lambda c: cols[c], parsed.quoted)
        vals = np.broadcast_to(np.asarray(out, dtype="float64"), (len(df),)).copy()
    except (TypeError, ValueError) as exc:
        raise error(
            f"{key}: expression {_short(parsed.text)!r} cannot be evaluated "
            f"({type(exc).__name__}); combine comparisons with and/or, numbers with + - * /"
        ) from None
    for v in cols.values():
        vals[np.isnan(v)] = np.nan
    return vals


def derive_breaks(
    df: pd.DataFrame,
    column: str,
    parsed: ParsedDerive,
    key: str,
    error: type[ReplisynthError] = ManifestError,
) -> int:
    """Rows where `column` differs from its expression (relative tolerance 1e-6, the precision
    of float32 storage); a row with a missing input must have `column` missing."""
    want = derive_values(df, parsed, key, error)
    got = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    both_missing = np.isnan(want) & np.isnan(got)
    close = np.isclose(got, want, rtol=1e-6, atol=1e-9)
    return int(np.sum(~(close | both_missing)))


# ---------------------------------------------------------------------------------------------
# evaluation of checked trees


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}


@dataclass
class _Evaluator:
    """`evaluate` over one checked tree: names through `lookup` (quoted names mapped back)."""

    lookup: Callable[[str], Any]
    quoted: Mapping[str, str]

    def ev(self, n: ast.AST) -> Any:
        """Value of node `n`."""
        if isinstance(n, ast.Name):
            return self.lookup(self.quoted.get(n.id, n.id))
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, (ast.List, ast.Tuple)):
            return [self.ev(e) for e in n.elts]
        if isinstance(n, ast.BinOp):
            a, b = self.ev(n.left), self.ev(n.right)
            return _BINARY[type(n.op)](a, b)
        if isinstance(n, ast.UnaryOp):
            return self.unary(n)
        if isinstance(n, ast.BoolOp):
            return self.boolean(n)
        if isinstance(n, ast.Compare):
            return self.compare(n)
        if isinstance(n, ast.Call):
            return self.call(n)
        raise TypeError(f"unchecked node {type(n).__name__}")

    def unary(self, n: ast.UnaryOp) -> Any:
        """-x, +x, and elementwise not/~."""
        v = self.ev(n.operand)
        if isinstance(n.op, ast.USub):
            return -v
        if isinstance(n.op, ast.UAdd):
            return +v
        return _logical_not(v)

    def boolean(self, n: ast.BoolOp) -> Any:
        """Elementwise and/or of every operand (each evaluated)."""
        vals = [self.ev(v) for v in n.values]
        out = vals[0]
        for v in vals[1:]:
            out = (out & v) if isinstance(n.op, ast.And) else (out | v)
        return out

    def compare(self, n: ast.Compare) -> Any:
        """A chain of comparisons, each link elementwise and-ed."""
        left, out = self.ev(n.left), None
        for op, right in zip(n.ops, n.comparators, strict=True):
            r = self.ev(right)
            res = _compare(op, left, r)
            out = res if out is None else (out & res)
            left = r
        return out

    def call(self, n: ast.Call) -> Any:
        """An allow-listed call: x.isin([...]), x.isna(), x.notna(), I(...), np.<function>."""
        f = n.func
        numpy_call = (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "np"
            and f.attr in NUMPY_FUNCTIONS
        )
        if isinstance(f, ast.Attribute) and not numpy_call:  # x.isin([...]), x.isna(), x.notna()
            col = pd.Series(self.ev(f.value))
            return col.isin(self.ev(n.args[0])) if f.attr == "isin" else getattr(col, f.attr)()
        name = f.attr if isinstance(f, ast.Attribute) else f.id  # type: ignore[attr-defined]
        args = [self.ev(a) for a in n.args]
        if name == "I":
            return args[0]
        return NUMPY_FUNCTIONS[name](*args)


def evaluate(
    node: ast.expr, lookup: Callable[[str], Any], quoted: Mapping[str, str] | None = None
) -> Any:
    """Value of a checked expression: names through `lookup` (columns), numpy operators and
    the allow-listed functions; `and`/`or`/`not`/`~` are elementwise."""
    return _Evaluator(lookup, quoted or {}).ev(node)


def _logical_not(v: Any) -> Any:
    if isinstance(v, pd.Series):
        if not (pd.api.types.is_bool_dtype(v.dtype)):
            raise TypeError("not/~ applies to true/false values")
        return ~v
    if isinstance(v, np.ndarray):
        return ~v.astype(bool)
    return not v


def _compare(op: ast.cmpop, a: Any, b: Any) -> Any:
    if isinstance(op, ast.In):
        return pd.Series(a).isin(b) if not np.isscalar(a) else a in b
    if isinstance(op, ast.NotIn):
        return ~pd.Series(a).isin(b) if not np.isscalar(a) else a not in b
    return {
        ast.Eq: lambda: a == b,
        ast.NotEq: lambda: a != b,
        ast.Lt: lambda: a < b,
        ast.LtE: lambda: a <= b,
        ast.Gt: lambda: a > b,
        ast.GtE: lambda: a >= b,
    }[type(op)]()


def subset_mask(
    df: pd.DataFrame, subset: str, key: str, error: type[ReplisynthError]
) -> np.ndarray:
    """Boolean row mask of a checked subset over `df`'s columns (missing values select no row
    unless the condition says otherwise, as in a pandas query)."""
    parsed = parse_subset(subset, key, error)
    missing = sorted(c for c in parsed.columns if c not in df.columns)
    if missing:
        raise error(
            f"{key}: subset {_short(subset)!r} names {', '.join(map(repr, missing))}, not a column of the data; check the spelling"
        )
    try:
        with np.errstate(all="ignore"):
            mask = evaluate(parsed.tree, lambda c: df[c], parsed.quoted)
    except Exception as exc:
        raise error(
            f'{key}: subset {_short(subset)!r} cannot be evaluated ({type(exc).__name__}); compare columns with numbers or quoted text, e.g. "year == 1978 and age >= 18"'
        ) from None
    if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask.dtype):
        raise error(
            f'{key}: subset {_short(subset)!r} does not give a true/false value per row; write a condition such as "age >= 18"'
        )
    return mask.fillna(False).to_numpy(dtype=bool)


# ---------------------------------------------------------------------------------------------
# formulaic, fed only checked formulas


_ALIAS = "_rsfn_"  # a function name a data column hides is called through this alias


def formulaic_context() -> dict[str, Any]:
    """The names formulaic may resolve besides the data columns: the allow-listed functions,
    plainly and under the alias a clashing column leaves them (never the caller's frame)."""
    from formulaic.transforms import TRANSFORMS

    plain: dict[str, Any] = {**NUMPY_FUNCTIONS, "C": TRANSFORMS["C"], "I": TRANSFORMS["I"]}
    plain.update({c: TRANSFORMS[c] for c in CONTRASTS})
    aliases = {_ALIAS + k: v for k, v in plain.items()}
    aliases.update({f"{_ALIAS}np_{k}": v for k, v in NUMPY_FUNCTIONS.items()})
    return {**plain, **aliases}


def _alias_calls(formula: str, clash: set[str]) -> str:
    """`formula` with every call of a function whose name is also a data column in `clash`
    (C, I, log, np...) made through its alias, so the column and the function both resolve."""
    out, last = [], 0
    for tok in tokenize_formula(formula):
        if tok.kind != "call":
            continue
        src, quoted = _quote_backticks(tok.text, "", ManifestError)
        tree = ast.parse(src.strip(), mode="eval")
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call):
                continue
            f = n.func
            if isinstance(f, ast.Name) and f.id in clash:
                n.func = ast.Name(_ALIAS + f.id, ast.Load())
            elif (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Name)
                and f.value.id in clash
            ):
                n.func = ast.Name(f"{_ALIAS}np_{f.attr}", ast.Load())
        text = ast.unparse(tree)
        for ph, name in quoted.items():
            text = text.replace(ph, f"`{name}`")
        out += [formula[last : tok.start], text]
        last = tok.start + len(tok.text)
    return "".join(out) + formula[last:]


def _unalias(name: str) -> str:
    return re.sub(rf"{_ALIAS}np_(\w+)\(", r"np.\1(", name).replace(_ALIAS, "")


def model_matrix(
    formula: str,
    data: pd.DataFrame,
    na_action: str = "raise",
    key: str = "",
    error: type[ReplisynthError] = ManifestError,
) -> Any:
    """formulaic's model matrices of a formula checked against the grammar, over `data` and
    `formulaic_context()` only; a column named like a function (bs, C, I, log...) is a
    column as a term and the function when called."""
    import formulaic

    parsed = parse_formula(formula, key, error)
    missing = sorted(c for c in parsed.columns if c not in data.columns)
    if missing:
        raise error(
            f"{key}: the formula reads {', '.join(map(repr, missing))}, not a column of the data"
        )
    called = {f.split(".", 1)[0] for f in parsed.functions}
    clash = {c for c in called if c in data.columns}
    if clash and any(str(c).startswith(_ALIAS) for c in data.columns):
        raise error(f"{key}: a column name starts with {_ALIAS!r}, which is reserved; rename it")
    text = _alias_calls(formula, clash) if clash else formula
    with np.errstate(all="ignore"):  # log(0), log(-1): the callers name such terms themselves
        mm = formulaic.model_matrix(text, data, na_action=na_action, context=formulaic_context())
    if clash:
        for part in (mm.lhs, mm.rhs) if hasattr(mm, "rhs") else (mm,):
            part.columns = [_unalias(str(c)) for c in part.columns]
    return mm


def term_tree(term: str) -> tuple[ast.expr, dict[str, str]]:
    """The checked expression of one design-column factor (`log(x)`, `I(x ** 2)`): what
    `evaluate` computes from column arrays."""
    parse_formula(f"_ ~ {term}")
    return _parse_python(term, "", ManifestError, "the term")
