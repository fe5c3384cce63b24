"""Reference fits of checkpoints: OLS/WLS, fe/re/iv, maximum-likelihood families."""
