"""The papers' reported numbers (``data/reported/*.csv``), loaded and validated.

Every table has a schema: each column's type, unit and allowed range, and whether it may be empty.
Every row must name its source (paper and table, or repository, path and commit). A bad value is an
error that names the file, the row (as the line number a spreadsheet or editor shows) and the column,
so a typo in a reported number is found when the table is loaded, not when a figure looks odd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .paths import repository_root

__all__ = [
    "Column", "PCT", "POSITIVE", "ReportedDataError", "SCHEMAS", "SOURCE", "read_reported", "reported_dir",
    "validate",
]


@dataclass(frozen=True)
class Column:
    kind: str = "str"
    """``str``, ``float``, ``int``, ``bool`` or ``date`` (ISO, YYYY-MM-DD)."""
    required: bool = False
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


PCT = Column("float", unit="%", minimum=0, maximum=100)
POSITIVE = Column("float", minimum=0)
SOURCE = Column("str", required=True)

SCHEMAS: dict[str, dict[str, Column]] = {
    # S3's released per-run results (Nauen et al., WACV 2025).
    "s3_runs": {
        "model": Column(required=True),
        "run": Column(required=True),
        "timm_name": Column(),
        "timm_match": Column(required=True, choices=("same", "approximate", "none")),
        "timm_note": Column(),
        "pretrain_res": Column("int", True, "px", 32, 2048),
        "eval_res": Column("int", True, "px", 32, 2048),
        "pretrain": Column(),
        "finetune": Column(),
        "params_M": Column("float", True, "millions", 0),
        "gflops_s3": Column("float", True, "GFLOPs (fvcore + S3's per-op counts)", 0),
        "gmacs": Column("float", False, "GMACs (torchprofile)", 0),
        "top1": Column("float", True, "%", 0, 100),
        "top1_best": PCT,
        "top5_best": PCT,
        "throughput_img_s": Column("float", False, "img/s (A100, fp32)", 0),
        "throughput_batch": Column("int", False, "images", 1),
        "infer_mem_gib_bs1": Column("float", unit="GiB", minimum=0),
        "infer_mem_gib_bs32": Column("float", unit="GiB", minimum=0),
        "infer_mem_gib_bs64": Column("float", unit="GiB", minimum=0),
        "infer_mem_gib_bs128": Column("float", unit="GiB", minimum=0),
        "train_mem_gib": Column("float", unit="GiB, summed over GPUs at global batch 2048", minimum=0),
        "train_mem_gib_per_gpu": Column("float", unit="GiB", minimum=0),
        "train_gpus": Column("int", minimum=1),
        "global_batch": Column("int", minimum=1),
        "train_amp": Column("bool"),
        "gpu": Column(required=True),
        "run_date": Column("date"),
        "note": Column(),
        "source": SOURCE,
    },
    # Headline results of the methods the notebooks reimplement, one family per strategy.
    "methods": {
        "family": Column(required=True, choices=(
            "token_merging", "token_pruning", "patch_slimming", "structured_pruning", "distillation",
            "quantization_ptq", "baseline_recipe", "data_multiplexing",
        )),
        "method": Column(required=True),
        "model": Column(required=True),
        "setting": Column(),
        "dataset": Column(required=True),
        "params_M": Column("float", unit="millions", minimum=0),
        "cost": Column("float", unit="see cost_unit", minimum=0),
        "cost_unit": Column(choices=("", "GMACs", "GFLOPs (as reported)")),
        "cost_reduction_pct": PCT,
        "top1_baseline": PCT,
        "top1": PCT,
        "top1_delta": Column("float", unit="percentage points", minimum=-100, maximum=100),
        "throughput_baseline_img_s": POSITIVE,
        "throughput_img_s": POSITIVE,
        "hardware": Column(),
        "note": Column(),
        "source": SOURCE,
    },
    # S1's "360" dimensions and where this project measures each.
    "s1_dimensions": {
        "dimension": Column(required=True),
        "question": Column(required=True),
        "notebook": Column(required=True),
        "metric": Column(required=True),
        "basis": Column(required=True),
        "source": SOURCE,
    },
}


class ReportedDataError(ValueError):
    """A reported table does not match its schema."""


def reported_dir() -> Path:
    root = repository_root()
    if root is None:
        raise FileNotFoundError(
            "data/reported/ was not found: run from inside the vitsurvey repository, or pass path= to read_reported()."
        )
    return root / "data" / "reported"


def _parse(value: str, col: Column) -> object:
    if col.kind == "str":
        return value
    if col.kind == "bool":
        if value not in ("True", "False"):
            raise ValueError("expected True or False")
        return value == "True"
    if col.kind == "date":
        return pd.Timestamp(value).date()  # raises ValueError on a bad date
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError("expected a finite number")
    if col.kind == "int":
        if number != int(number):
            raise ValueError("expected a whole number")
        return int(number)
    return number


def validate(frame: pd.DataFrame, schema: dict[str, Column], name: str) -> pd.DataFrame:
    """Check ``frame`` (all columns as strings, '' for empty) against ``schema``; return it typed."""
    missing = [c for c in schema if c not in frame.columns]
    extra = [c for c in frame.columns if c not in schema]
    if missing or extra:
        raise ReportedDataError(f"{name}: columns differ from the schema: missing {missing}, unexpected {extra}.")
    typed: dict[str, list[object]] = {c: [] for c in schema}
    for i, row in enumerate(frame.itertuples(index=False)):
        line = i + 2  # the header is line 1
        for c, value in zip(frame.columns, row):
            col = schema[c]
            value = value.strip()
            where = f"{name}, line {line}, column {c!r}"
            if value == "":
                if col.required:
                    raise ReportedDataError(f"{where}: a value is required (every row needs it).")
                typed[c].append(None)
                continue
            try:
                parsed = _parse(value, col)
            except ValueError as exc:
                raise ReportedDataError(f"{where}: {value!r} is not a valid {col.kind} ({exc}).") from None
            if col.choices is not None and parsed not in col.choices:
                raise ReportedDataError(f"{where}: {value!r} is not one of {list(col.choices)}.")
            unit = f" {col.unit}" if col.unit else ""
            if col.minimum is not None and parsed < col.minimum:  # type: ignore[operator]
                raise ReportedDataError(f"{where}: {value}{unit} is below the minimum {col.minimum}.")
            if col.maximum is not None and parsed > col.maximum:  # type: ignore[operator]
                raise ReportedDataError(f"{where}: {value}{unit} is above the maximum {col.maximum}.")
            typed[c].append(parsed)
    out = pd.DataFrame(typed)
    for c, col in schema.items():
        if col.kind in ("float", "int"):
            out[c] = pd.to_numeric(out[c]).astype("Float64" if col.kind == "float" else "Int64")
    return out


def read_reported(name: str, path: str | Path | None = None) -> pd.DataFrame:
    """Load and validate the reported table ``name`` (``data/reported/<name>.csv`` unless ``path``)."""
    if name not in SCHEMAS:
        raise ValueError(f"Unknown reported table {name!r}; known: {', '.join(SCHEMAS)}.")
    path = Path(path) if path is not None else reported_dir() / f"{name}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return validate(frame, SCHEMAS[name], path.name)
