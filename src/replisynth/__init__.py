"""replisynth: disclosure-safe synthetic mirrors of confidential microdata.

Data flows one way: manifest -> extract -> bundle -> synthesize -> pin -> verify -> report.
"""

import os as _os

# The pipeline's matrix products are tall and thin (rows x a few dozen dims), where BLAS
# threads gain little; on a shared or busy machine (parallel Snakemake jobs, a login node)
# their spin-waiting made a large correlation matrix many times slower. One thread unless
# the user chose otherwise; effective when replisynth is imported before numpy (the CLI
# and the workflow's scripts do).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_v, "1")

__version__ = "0.1.0"
