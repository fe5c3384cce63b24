"""The run's verdict from tiers.json, with the standard library only: the last job of the
workflow (`check_tier`) imports nothing heavy, so it costs well under a second."""

from __future__ import annotations

import json
from pathlib import Path

from replisynth.core.errors import TierNotMet


def check_tier(tiers_path: str | Path) -> None:
    """Raise TierNotMet when the verdict misses the required tier (naming what failed)."""
    t = json.loads(Path(tiers_path).read_text(encoding="utf-8"))
    if not t["passed"]:
        problems = []
        for name, s in t["sources"].items():
            for key in ("schema", "marginals", "correlations", "strata"):
                for p in s[key].get("problems", [])[:5]:
                    problems.append(f"{name}/{key}: {p}")
            note = (s.get("checkpoints") or {}).get("note")
            if note and t["tier_required"] >= 4:
                problems.append(f"{name}/checkpoints: {note}")
        for tag, c in t["checkpoints"].items():
            if c.get("status") == "rejected" and t["tier_required"] >= 4:
                problems.append(
                    f"checkpoint {tag}: rejected by disclosure control ({c.get('reason')})"
                )
            elif c.get("passed") is False:
                both = [c.get(k) for k in ("max_dbeta_se", "max_dbeta_se_target")]
                dbeta = max((v for v in both if v is not None), default=None)
                shown = "n/a" if dbeta is None else f"{dbeta:.3g}"
                problems.append(f"checkpoint {tag}: {c.get('reason') or f'max dbeta/SE {shown}'}")
        raise TierNotMet(
            f"{tiers_path}: tier {t['tier_met']} met, tier {t['tier_required']} required (verify.tier); "
            + ("; ".join(problems[:12]) or "see report.html")
        )
