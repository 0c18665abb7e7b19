import pandas as pd
import pytest

from vitsurvey import survey


@pytest.mark.parametrize("name", list(survey.SCHEMAS))
def test_committed_tables_validate(name):
    frame = survey.read_reported(name)
    assert len(frame) > 0
    assert frame["source"].str.len().min() > 10


def test_s3_table_holds_all_runs_and_reproduces_its_correlation():
    runs = survey.read_reported("s3_runs")
    assert len(runs) == 90 and runs["model"].nunique() == 35
    both = runs.dropna(subset=["gflops_s3", "train_mem_gib"])
    assert len(both) == 89
    r = both["gflops_s3"].astype(float).corr(both["train_mem_gib"].astype(float))
    assert r == pytest.approx(0.856, abs=5e-4)  # the value PAPERS.md quotes for S3's data


def test_methods_cover_every_family():
    families = set(survey.read_reported("methods")["family"])
    for needed in ("token_merging", "token_pruning", "patch_slimming", "structured_pruning", "distillation",
                   "quantization_ptq", "data_multiplexing"):
        assert needed in families


def test_s1_has_ten_dimensions():
    assert len(survey.read_reported("s1_dimensions")) == 10


def _write(tmp_path, name, mutate):
    frame = pd.read_csv(survey.reported_dir() / f"{name}.csv", dtype=str, keep_default_na=False)
    mutate(frame)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda f: f.__setitem__("top1", f["top1"].where(f.index != 3, "84,7")),
         r"s3_runs.csv, line 5, column 'top1': '84,7' is not a valid float"),
        (lambda f: f.__setitem__("top1", f["top1"].where(f.index != 0, "184.7")),
         r"line 2, column 'top1': 184.7 % is above the maximum 100"),
        (lambda f: f.__setitem__("source", f["source"].where(f.index != 7, "")),
         r"line 9, column 'source': a value is required"),
        (lambda f: f.__setitem__("eval_res", f["eval_res"].where(f.index != 1, "224.5")),
         r"line 3, column 'eval_res': '224.5' is not a valid int \(expected a whole number\)"),
        (lambda f: f.__setitem__("timm_match", f["timm_match"].where(f.index != 2, "maybe")),
         r"line 4, column 'timm_match': 'maybe' is not one of"),
        (lambda f: f.__setitem__("run_date", f["run_date"].where(f.index != 2, "2023-13-45")),
         r"line 4, column 'run_date'"),
        (lambda f: f.pop("gmacs"), r"missing \['gmacs'\]"),
    ],
    ids=["not-a-number", "out-of-range", "no-source", "not-whole", "bad-choice", "bad-date", "missing-column"],
)
def test_malformed_table_names_file_line_and_column(tmp_path, mutate, message):
    path = _write(tmp_path, "s3_runs", mutate)
    with pytest.raises(survey.ReportedDataError, match=message):
        survey.read_reported("s3_runs", path=path)


def test_unknown_table():
    with pytest.raises(ValueError, match="known: s3_runs"):
        survey.read_reported("s4_runs")
