"""Where the Slurm test cannot run (no root, no apt) it skips with its reason, unless
REPLISYNTH_REQUIRE_SLURM=1 (our CI), where the same situation fails."""

from __future__ import annotations

import pytest
import test_slurm


def test_missing_cluster_skips_with_reason(monkeypatch):
    monkeypatch.delenv("REPLISYNTH_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Slurm cluster: needs root"):
        test_slurm._unavailable("needs root to install slurm-wlm/munge and start the daemons")


def test_missing_cluster_fails_where_required(monkeypatch):
    monkeypatch.setenv("REPLISYNTH_REQUIRE_SLURM", "1")
    with pytest.raises(
        pytest.fail.Exception, match="REPLISYNTH_REQUIRE_SLURM=1 but no Slurm cluster: no apt"
    ):
        test_slurm._unavailable("no apt")


def test_fixture_skips_without_root(monkeypatch):
    monkeypatch.delenv("REPLISYNTH_REQUIRE_SLURM", raising=False)
    monkeypatch.setattr(test_slurm.os, "geteuid", lambda: 1000)
    gen = test_slurm.cluster.__wrapped__()
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        next(gen)
