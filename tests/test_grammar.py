"""The safe grammar of formulas and subsets: what it accepts (and that it reads the right
columns), what it refuses (one error naming the key and the offending token), that it cuts
formulas where formulaic cuts them, and that subsets keep pandas-query semantics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replisynth.config.formula_grammar import (
    formula_columns,
    model_matrix,
    parse_formula,
    parse_subset,
    subset_mask,
    tokenize_formula,
)
from replisynth.config.manifest import Checkpoint
from replisynth.core.errors import BundleError, CheckpointError, ManifestError, ReplisynthError
from replisynth.stats.design import build_design, estimation_sample

ACCEPTED = [
    ("y ~ x", {"y", "x"}),
    ("y ~ age + I(np.maximum(age - 90, 0)) + minimum(x, 2)", {"y", "age", "x"}),
    (
        "lwage ~ educ + exper + I(exper**2) + black + C(region66)",
        {"lwage", "educ", "exper", "black", "region66"},
    ),
    ("y ~ 1 + w + [x1 + x2 ~ z1 + z2]", {"y", "w", "x1", "x2", "z1", "z2"}),
    ("y ~ x1 * female + C(r, Treatment(reference='b'))", {"y", "x1", "female", "r"}),
    ("y ~ C(r, Treatment('b')) + C(s, levels=[3, 1, 2]) + C(t, Sum())", {"y", "r", "s", "t"}),
    (
        "y ~ np.log(a) + log(b) + power(c, 2) + sqrt(abs(d)) + exp(I(e / 10))",
        {"y", "a", "b", "c", "d", "e"},
    ),
    ("y ~ `my col` + log(`other col`)", {"y", "my col", "other col"}),
    ("y ~ x - 1", {"y", "x"}),
    ("y ~ 0 + x", {"y", "x"}),
    ("y ~ -1 + x", {"y", "x"}),
    ("y ~ (a + b)**2 + a:b + a/b", {"y", "a", "b"}),
    (
        "y ~ bs + C + I + log + scale + center + poly",
        {"y", "bs", "C", "I", "log", "scale", "center", "poly"},
    ),
    ("y ~ log(log) + C(C) + I(I ** 2)", {"y", "log", "C", "I"}),
    ("y ~ a.b + x_1", {"y", "a.b", "x_1"}),
]

# (formula, the token the message must quote)
REFUSED = [
    ("y ~ np.os.system('touch x')", "np.os.system"),
    ("y ~ np.lib.npyio.os.system('x')", "np.lib.npyio.os.system"),
    ("y ~ x.to_csv('/tmp/out')", "x.to_csv"),
    ("y ~ {x + 1}", "{"),
    ("y ~ Q('x')", "Q"),
    ("y ~ x + @v", "@"),
    ("y ~ I([a for a in b])", "[a for a in b]"),
    ("y ~ I(x.__class__)", "x.__class__"),
    ("y ~ I(__builtins__)", "__builtins__"),
    ("y ~ x %in% z", "%"),
    ("y ~ x | z", "|"),
    ("y ~ x[0]", "x[0]"),
    ("y ~ scale(x)", "scale"),
    ("y ~ bs(x, df=3)", "bs"),
    ("y ~ C(x, contr.treatment)", "contr.treatment"),
    ("y ~ I(getattr(x, 'a'))", "getattr"),
    ("y ~ I(eval('1'))", "eval"),
    ("y ~ np.log.__self__(x)", "np.log.__self__"),
    ("y ~ log(x, out=x)", "log(x, out=x)"),
    ("y ~ C(x, Treatment(reference=open('f')))", "open('f')"),
    ("y ~ C(x, levels=[a])", "[a]"),
    ("y ~ I(x if x else 1)", "x if x else 1"),
    ("y ~ I('text')", "'text'"),
    ("y ~ 2", "2"),
]


@pytest.mark.parametrize(("formula", "columns"), ACCEPTED)
def test_accepted_formulas_read_their_columns(formula: str, columns: set[str]) -> None:
    assert formula_columns(formula, "checkpoints[0].formula") == columns


@pytest.mark.parametrize(("formula", "token"), REFUSED)
@pytest.mark.parametrize(
    "key", ["checkpoints[2].formula", "/b/checkpoints.json: checkpoints[1].formula"]
)
def test_refused_formulas_name_key_and_token(formula: str, token: str, key: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_formula(formula, key)
    msg = str(info.value)
    assert msg.startswith(key + ": ")
    assert token in msg
    assert "\n" not in msg


def test_refusal_takes_the_callers_error_class() -> None:
    with pytest.raises(
        BundleError, match=r"^b/checkpoints\.json: checkpoints\[0\]\.formula: calling 'eval'"
    ):
        parse_formula("y ~ eval('1')", "b/checkpoints.json: checkpoints[0].formula", BundleError)
    with pytest.raises(BundleError, match=r"checkpoints\[0\]\.subset: expected a condition string"):
        parse_subset(["a"], "checkpoints[0].subset", BundleError)


@pytest.mark.parametrize(
    "formula",
    ["y ~ x1 +", "y ~ (x1 + x2", "y ~ x1 x2", "y ~ [x ~ z] + [a ~ b]", "y ~ x ~ z", "y ~ log (x)"],
)
def test_structure_errors_say_cannot_parse(formula: str) -> None:
    with pytest.raises(ManifestError, match=r"^checkpoints\[3\]\.formula: cannot parse formula"):
        parse_formula(formula, "checkpoints[3].formula")


# ---------------------------------------------------------------------------------------------
# the grammar cuts formulas where formulaic does: the text it checks is the text formulaic runs


def _formulaic_spans(formula: str) -> list[tuple[str, str]]:
    from formulaic.parser.algos.tokenize import tokenize

    out = []
    for t in tokenize(formula):
        kind = t.kind.value
        if kind in ("python", "name", "value"):
            out.append(
                ("call" if kind == "python" else ("number" if kind == "value" else "name"), t.token)
            )
    return out


@pytest.mark.parametrize(
    "formula", [f for f, _ in ACCEPTED] + ["y ~ C(x, levels=[')', 'b'])", "y ~ log(`a)b`)"]
)
def test_python_spans_match_formulaic(formula: str) -> None:
    mine = [
        (t.kind, t.text) for t in tokenize_formula(formula) if t.kind in ("call", "name", "number")
    ]
    assert mine == _formulaic_spans(formula)


_ATOMS = st.sampled_from(
    [
        "x",
        "y",
        "a.b",
        "`q r`",
        "C(x)",
        "I(x ** 2)",
        "log(x)",
        "np.log(x)",
        "1",
        "0",
        "x.to_csv('p')",
        "np.os.system('t')",
        "__import__('os')",
        "{x}",
        "Q('x')",
        "@v",
        "(",
        ")",
        "[",
        "]",
        "'",
        '"',
        "`",
        "~",
        "+",
        "-",
        "*",
        ":",
        "/",
        "**",
        "|",
        "%",
        "lambda: 1",
        "[x for x in y]",
        ",",
        "=",
        "\\",
        "\n",
        "bs(x)",
        "x[0]",
        " ",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ATOMS, min_size=1, max_size=12))
def test_token_soup_never_evaluates_or_crashes(parts: list[str]) -> None:
    """Random token soups: either a ManifestError (one line, naming the key) or a formula whose
    every Python span formulaic would run is one the grammar checked."""
    formula = " ".join(parts)
    try:
        parsed = parse_formula(formula, "checkpoints[0].formula")
    except ManifestError as exc:
        assert str(exc).startswith("checkpoints[0].formula: ")
        assert "\n" not in str(exc)
        return
    assert "~" in formula
    mine = [
        (t.kind, t.text) for t in tokenize_formula(formula) if t.kind in ("call", "name", "number")
    ]
    assert mine == _formulaic_spans(formula)
    assert not any(c.startswith("__") for c in parsed.columns)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        _ATOMS
        | st.sampled_from(
            ["and", "or", "not", "&", "==", ">=", "<", "in", "isin([1])", ".isna()", "'s'"]
        ),
        min_size=1,
        max_size=10,
    )
)
def test_subset_soup_never_tracebacks(parts: list[str]) -> None:
    df = pd.DataFrame(
        {"x": [1.0, 2.0, np.nan], "y": [3, 4, 5], "a.b": [1, 1, 2], "q r": ["s", "t", "s"]}
    )
    subset = " ".join(parts)
    try:
        mask = subset_mask(df, subset, "checkpoints[0].subset", CheckpointError)
    except ReplisynthError as exc:
        assert str(exc).startswith("checkpoints[0].subset: ") and "\n" not in str(exc)
        return
    assert mask.dtype == bool and len(mask) == len(df)


# ---------------------------------------------------------------------------------------------
# subsets: pandas-query semantics, evaluated without DataFrame.eval


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 300
    return pd.DataFrame(
        {
            "age": rng.integers(15, 70, n),
            "female": rng.integers(0, 2, n),
            "region": rng.choice(list("nsew"), n),
            "inc": np.where(rng.random(n) < 0.2, np.nan, rng.lognormal(size=n)),
            "my var": rng.normal(size=n),
        }
    )


SUBSETS = [
    "age >= 25",
    "female == 1 and age < 40",
    "female == 1 & age < 40",
    "female == 0 | age > 60",
    "not (age > 30)",
    "~(age > 30)",
    "18 <= age < 65",
    "region == 's'",
    "region != 'n'",
    "region in ['n', 's']",
    "region not in ['n']",
    "inc > 1",
    "not (inc > 1)",
    "age + female > 40",
    "`my var` > 0",
    "age % 2 == 0",
    "age / 10 >= 3.5",
]


@pytest.mark.parametrize("subset", SUBSETS)
def test_subset_matches_pandas_query(frame: pd.DataFrame, subset: str) -> None:
    expected = frame.eval(subset).to_numpy(dtype=bool)  # pandas only as the reference here
    got = subset_mask(frame, subset, "checkpoints[0].subset", CheckpointError)
    assert np.array_equal(got, expected)
    assert got.sum() not in (0, len(frame))


def test_subset_methods_and_missing(frame: pd.DataFrame) -> None:
    assert np.array_equal(
        subset_mask(frame, "inc.isna()", "k", CheckpointError), frame["inc"].isna().to_numpy()
    )
    assert np.array_equal(
        subset_mask(frame, "inc.notna() and age > 30", "k", CheckpointError),
        (frame["inc"].notna() & (frame["age"] > 30)).to_numpy(),
    )
    assert np.array_equal(
        subset_mask(frame, "region.isin(['e', 'w'])", "k", CheckpointError),
        frame["region"].isin(["e", "w"]).to_numpy(),
    )
    assert np.array_equal(
        subset_mask(frame, "np.log(inc) > 0", "k", CheckpointError),
        (np.log(frame["inc"]) > 0).to_numpy(),
    )


@pytest.mark.parametrize(
    ("subset", "pattern"),
    [
        ("age + 1", "does not give a true/false value per row"),
        ("age", "does not give a true/false value per row"),
        ("agee > 3", "'agee', not a column of the data"),
        ("1 == 1", "names no column"),
        ("x1.to_csv('/p') != 1", "calling 'x1.to_csv' is not allowed"),
        ("age.values > 1", "attribute access 'age.values'"),
        ("age > @limit", "the @ variable '@limit'"),
        ("region.str.len() > 1", "calling 'region.str.len'"),
        ("region.isin(other)", "a list of literal values"),
        ("age in other", "a list of literal values"),
    ],
)
def test_bad_subsets(frame: pd.DataFrame, subset: str, pattern: str) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"^checkpoints\[4\]\.subset: .*"
        + pattern.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("+", r"\+"),
    ):
        subset_mask(frame, subset, "checkpoints[4].subset", CheckpointError)


def test_subset_sample_is_unchanged_for_columns_named_like_functions() -> None:
    df = pd.DataFrame({"y": np.arange(100.0), "log": np.arange(100) % 3, "C": np.arange(100) % 2})
    cp = Checkpoint(
        tag="t", source="s", model="ols", formula="y ~ log", subset="C == 1 and log > 0"
    )
    assert len(estimation_sample(df, cp)) == int(((df["C"] == 1) & (df["log"] > 0)).sum())


# ---------------------------------------------------------------------------------------------
# formulas whose columns are named like formula functions


@pytest.mark.parametrize("name", ["bs", "C", "I", "log", "scale", "center", "poly", "np", "sqrt"])
def test_column_named_like_a_function(name: str) -> None:
    """A column named bs, C, I, log, ... is a column as a term and the function when called;
    the design equals the one of the same data with the column renamed."""
    rng = np.random.default_rng(len(name))
    n = 120
    df = pd.DataFrame(
        {
            "y": rng.normal(size=n),
            name: rng.uniform(1, 3, n),
            "x": rng.uniform(1, 3, n),
            "g": rng.integers(0, 3, n),
        }
    )
    called = {"C": "C(g)", "I": "I(x ** 2)", "np": "np.log(x)", "sqrt": "sqrt(x)"}.get(
        name, "log(x)"
    )
    formula = f"y ~ {name} + {called} + C(g)" if called != "C(g)" else f"y ~ {name} + C(g)"
    d = build_design(df, Checkpoint(tag="t", source="s", model="ols", formula=formula))
    ref = build_design(
        df.rename(columns={name: "zz"}),
        Checkpoint(
            tag="t", source="s", model="ols", formula=formula.replace(f"~ {name} +", "~ zz +")
        ),
    )
    assert d.terms[1] == name
    assert [t if t != name else "zz" for t in d.terms] == ref.terms
    assert np.array_equal(d.X, ref.X)
    if name in ("C", "I", "log", "np", "sqrt"):  # the column is also a factor's argument
        same = build_design(
            df, Checkpoint(tag="t", source="s", model="ols", formula=f"y ~ x + {_call_on(name)}")
        )
        assert np.allclose(same.X[:, -1], _expected(name, df[name]))


def _call_on(name: str) -> str:
    return {"C": "I(C * 2)", "I": "I(I * 2)", "np": "np.exp(np)", "sqrt": "sqrt(sqrt)"}.get(
        name, f"log({name})"
    )


def _expected(name: str, col: pd.Series) -> np.ndarray:
    v = col.to_numpy()
    return {"C": v * 2, "I": v * 2, "np": np.exp(v), "sqrt": np.sqrt(v)}.get(name, np.log(v))


def test_model_matrix_refuses_unchecked_and_missing() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [1.0, 0.0, 2.0]})
    with pytest.raises(CheckpointError, match=r"^k: calling 'np\.os\.system'"):
        model_matrix("y ~ np.os.system('true')", df, "raise", "k", CheckpointError)
    with pytest.raises(CheckpointError, match=r"'np', not a column"):
        model_matrix("y ~ np", df, "raise", "k", CheckpointError)
    with pytest.raises(CheckpointError, match=r"'z', not a column"):
        model_matrix("y ~ log(z)", df, "raise", "k", CheckpointError)


def test_spline_terms_evaluate_elementwise() -> None:
    """maximum/minimum take two arguments (splines) and compute what numpy computes."""
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "age": [80.0, 91.0, 95.0, 60.0]})
    mm = model_matrix("y ~ I(np.maximum(age - 90, 0))", df, "raise", "k", CheckpointError)
    col = [c for c in mm.rhs.columns if "maximum" in c][0]
    assert list(mm.rhs[col]) == [0.0, 1.0, 5.0, 0.0]
    with pytest.raises(CheckpointError, match="argument"):
        model_matrix("y ~ I(np.maximum(age))", df, "raise", "k", CheckpointError)


def test_columns_named_like_functions_end_to_end(tmp_path) -> None:
    """Columns called bs, C, log and scale through extraction, synthesis and verification:
    the checkpoint reading them as columns (and calling log and C on others) is released with
    those term names and verified on the synthetic data."""
    from conftest import make_people, manifest_for, run_pipeline

    df = make_people(1500, seed=9).rename(
        columns={"x1": "bs", "x2": "log", "region": "C", "female": "scale"}
    )
    df["inc"] = df["income"].fillna(df["income"].median())
    p = tmp_path / "people.csv"
    df.drop(columns=["income"]).to_csv(p, index=False)
    raw = manifest_for(p)
    raw["verify"] = {"tier": 4}
    raw["checkpoints"] = [
        {
            "tag": "names",
            "source": "people",
            "model": "ols",
            "vcov": "HC1",
            "formula": "y ~ bs + log + scale + C(C) + log(inc)",
            # bs > -1 drops hundreds of rows: a cut dropping a few (bs > -3) would count a
            # small cell against C's released table, which the subset-levels gate refuses
            "subset": "C != 'd' and bs > -1",
        }
    ]
    tiers = run_pipeline(raw, tmp_path / "out")
    cp = tiers["checkpoints"]["names"]
    assert cp["status"] == "verified" and cp["passed"], cp
    terms = {t["term"] for t in cp["terms"]}
    assert {"bs", "log", "scale", "C(C)[T.b]", "C(C)[T.c]", "log(inc)"} <= terms
