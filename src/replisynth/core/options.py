"""Option sets as Literal aliases, in one place (manifest, schema inference and estimators use them)."""

from typing import Literal, get_args

Model = Literal["ols", "fe", "re", "iv", "logit", "probit", "poisson", "nbreg", "ologit", "oprobit"]
SdcProfile = Literal["standard", "iab", "fsrdc", "strict"]
LogicalType = Literal["integer", "float", "categorical", "string", "boolean", "date"]
Role = Literal["continuous", "categorical"]
SourceFormat = Literal["csv", "parquet", "dta", "sav"]

MODELS: tuple[str, ...] = get_args(Model)
SUPPORTED_MODELS: tuple[str, ...] = (
    "ols",
    "fe",
    "re",
    "iv",
    "logit",
    "probit",
    "poisson",
    "nbreg",
    "ologit",
    "oprobit",
)
# maximum-likelihood families by outcome support (fit/glm.py fits them, pin/pin_discrete.py pins them)
GLM_BINARY: tuple[str, ...] = ("logit", "probit")
GLM_COUNT: tuple[str, ...] = ("poisson", "nbreg")
GLM_ORDERED: tuple[str, ...] = ("ologit", "oprobit")
GLM_MODELS: tuple[str, ...] = GLM_BINARY + GLM_COUNT + GLM_ORDERED
SDC_PROFILES: tuple[str, ...] = get_args(SdcProfile)
VCOV_FIXED: tuple[str, ...] = ("nonrobust", "HC0", "HC1", "HC2", "HC3")
SOURCE_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".dta": "dta",
    ".sav": "sav",
}

# Tier 2/3: every released Spearman correlation within this of its target (verify/verify.py); the
# swap refinement stops early once comfortably inside it (synthesize/refine.py).
CORR_TOL: float = 0.05
