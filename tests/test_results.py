import dataclasses

import pandas as pd
import pytest

from vitsurvey import results



@dataclasses.dataclass
class Row:
    method: str
    params: int
    top1: float


def test_append_writes_context_columns(out):
    path = results.append("01_vit_anatomy", [Row("baseline", 100, 85.5)], profile="smoke")
    assert path == out / "01_vit_anatomy.csv"
    frame = pd.read_csv(path)
    assert list(frame.columns[: len(results.COLUMNS)]) == results.COLUMNS
    row = frame.iloc[0]
    assert row["method"] == "baseline" and row["params"] == 100 and row["profile"] == "smoke"
    for col in ("device", "torch", "timm", "date"):
        assert isinstance(row[col], str) and row[col]


def test_append_accumulates_and_extends_columns(out):
    results.append("nb", [{"method": "a", "params": 1}], profile="cpu")
    results.append("nb.ipynb", [{"method": "b", "params": 2, "latency_ms": 3.5}], profile="cpu")
    frame = results.read("nb")
    assert frame["method"].tolist() == ["a", "b"]
    assert pd.isna(frame.loc[0, "latency_ms"]) and frame.loc[1, "latency_ms"] == 3.5


def test_crash_mid_write_leaves_previous_file_intact(out, monkeypatch):
    path = results.append("nb", [{"method": "first"}], profile="cpu")
    before = path.read_bytes()

    def crash(fd):  # the new rows have reached the temporary file; the process is interrupted before it is synced
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        results.append("nb", [{"method": "second"}], profile="cpu")
    assert path.read_bytes() == before
    # only the file and its (empty, hidden) lock remain
    assert sorted(p.name for p in out.iterdir()) == [".nb.csv.lock", "nb.csv"], "a temporary file was left behind"


def test_bad_rows_are_rejected(out):
    with pytest.raises(TypeError, match="mapping or a dataclass"):
        results.append("nb", [("a", 1)], profile="cpu")
    with pytest.raises(ValueError, match="No rows"):
        results.append("nb", [], profile="cpu")


def test_read_missing_is_empty(out):
    assert results.read("nothing").empty


def test_project_root_is_found_from_a_subdirectory(tmp_path, monkeypatch):
    monkeypatch.delenv(results.ENV_OUTPUT, raising=False)
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "vitsurvey").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert results.project_root() == tmp_path.resolve()


def test_device_name_tells_cpus_apart_by_instruction_set():
    features = results.cpu_features()
    assert features["isa"] in results.device_name("cpu")
    assert set(features) == {"isa", "extras", "int8_dot", "bf16"}
    assert features["int8_dot"] == bool({"VNNI", "AMX"} & set(features["extras"]))


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "x.csv"
    results.write_text_atomic("a,b\n1,2\n", path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.csv.lock", "x.csv"]  # no temporary file left


def test_superseded_rows_stay_in_the_file_but_are_not_read(out):
    results.append("t", [{"method": "old", "speedup": 2.0}, {"method": "kept", "top1": 90.0}], "cpu")
    assert results.supersede("t", lambda f: f["speedup"].notna(), "timed with an earlier routine") == 1
    assert results.read("t")["method"].tolist() == ["kept"]
    everything = results.read("t", superseded=True)
    assert everything["method"].tolist() == ["old", "kept"]
    assert everything.loc[0, results.SUPERSEDED] == "timed with an earlier routine"
    assert results.supersede("t", lambda f: f["speedup"].notna(), "again") == 0  # marked once, reason kept
    assert results.read("t", superseded=True).loc[0, results.SUPERSEDED] == "timed with an earlier routine"
    results.append("t", [{"method": "new", "speedup": 1.5}], "cpu")
    assert results.read("t")["method"].tolist() == ["kept", "new"]
    with pytest.raises(ValueError, match="Say why"):
        results.supersede("t", lambda f: f["speedup"].notna(), " ")
