"""MLflow runs (as MlflowStore.runs_frame returns them) -> one tidy row per trial: typed config
columns under their dotted keys, metrics under their names."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ganft.keys import config_keys, field_annotation
from ganft.report.stats import N_COL, RATIO_COL, SEED_COL, with_arms


def _field_types() -> dict[str, Any]:
    return {key: field_annotation(key) for key in config_keys()}


def cast_param(value: Any, annotation: Any) -> Any:
    """MLflow keeps params as strings: cast one back with its config field's type."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    if annotation is bool:
        return text == "True"
    if annotation is int:
        return int(float(text))
    if annotation is float:
        return float(text)
    if text == "None" and "None" in str(annotation):
        return None
    try:  # e.g. ``int | None``
        return int(text) if "int" in str(annotation) else float(text) if "float" in str(annotation) else text
    except ValueError:
        return text


def tidy_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point (its latest FINISHED run): config columns with their real types
    (dotted keys, e.g. ``data.train_size``), metrics without the ``metrics.`` prefix."""
    if raw.empty or "status" not in raw:
        return pd.DataFrame()
    runs = raw[raw["status"] == "FINISHED"].copy()
    if runs.empty:
        return pd.DataFrame()
    runs = runs.sort_values("start_time").drop_duplicates("tags.ganft.grid_point", keep="last")
    cols: dict[str, Any] = {"run_id": runs["run_id"].to_numpy(),
                            "grid_point": runs["tags.ganft.grid_point"].to_numpy()}
    for key, ann in _field_types().items():
        col = f"params.{key}"
        if col in runs:
            cols[key] = [cast_param(v, ann) for v in runs[col]]
    for col in runs.columns:
        if col.startswith("metrics."):
            cols[col.removeprefix("metrics.")] = runs[col].astype(float).to_numpy()
    cols["start_time"] = pd.to_datetime(runs["start_time"].to_numpy(), unit="ms")
    cols["end_time"] = pd.to_datetime(runs["end_time"].to_numpy(), unit="ms")
    for tag, name in (("tags.gan.cache", "gan_cache"), ("tags.gan.key", "gan_key"),
                      ("tags.ganft.device", "device"), ("tags.data.classes", "classes")):
        if tag in runs:
            cols[name] = runs[tag].to_numpy()
    out = pd.DataFrame(cols)  # built at once: column-by-column inserts fragment wide frames
    out = out.sort_values([c for c in (N_COL, RATIO_COL, SEED_COL) if c in out]).reset_index(drop=True)
    return with_arms(out)


def tidy_from_csv(path: Path) -> pd.DataFrame:
    """A report's own results.csv read back as tidy runs (config columns typed again): a committed
    report can be rebuilt with today's report code when its stores are gone."""
    df = pd.read_csv(path, keep_default_na=True)
    for key, ann in _field_types().items():
        if key in df:
            df[key] = [cast_param(v, ann) for v in df[key]]
    for col in ("start_time", "end_time"):
        if col in df:
            df[col] = pd.to_datetime(df[col])
    return with_arms(df)
