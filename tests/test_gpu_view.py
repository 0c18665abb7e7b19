"""What a notebook shows of the GPU run: the latest real run's finished rows, or that none exist."""

import pandas as pd
import pytest

from vitsurvey.gpu import view


def _row(run, step="tokens", status="ok", rehearsal=False, profile="gpu", device="NVIDIA H200", speedup=1.5):
    return {"method": "ToMe", "setting": "r=8", "device": device, "profile": profile, "date": run[:10], "run": run,
            "rehearsal": rehearsal, "step": step, "status": status, "speedup": speedup}


def test_no_results_says_not_measured():
    shown = view.measured(["tokens"], frame=pd.DataFrame())
    assert shown.empty and shown.caption == view.NOT_MEASURED


def test_rehearsals_failures_and_other_steps_are_not_shown():
    frame = pd.DataFrame([_row("2026-12-01T10:00:00", rehearsal=True, profile="smoke", device="cpu"),
                          _row("2026-12-01T11:00:00", status="failed: RuntimeError"),
                          _row("2026-12-01T12:00:00", step="pruning")])
    assert view.measured(["tokens"], frame=frame).caption == view.NOT_MEASURED
    shown = view.measured(["pruning"], frame=frame)
    assert len(shown.table) == 1 and shown.caption == "on one NVIDIA H200, measured on 2026-12-01"


def test_only_the_latest_run_counts():
    frame = pd.DataFrame([_row("2026-12-01T10:00:00", speedup=1.1), _row("2026-12-03T09:00:00", speedup=1.7),
                          _row("2026-12-03T09:00:00", speedup=1.8)])
    shown = view.measured(("tokens",), columns=["method", "speedup", "absent"], frame=frame)
    assert list(shown.table.columns) == ["method", "speedup"]
    assert shown.table["speedup"].tolist() == [1.7, 1.8]
    assert shown.caption.endswith("2026-12-03")


def test_steps_are_required():
    with pytest.raises(ValueError, match="steps"):
        view.measured([])
