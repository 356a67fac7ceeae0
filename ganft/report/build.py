"""Reports from a study's stores: read its finished MLflow runs (and Optuna's history), then write
``reports/<study>/``. ``build`` is what ``ganft report STUDY`` runs, and what a notebook calls:

    from ganft.report.build import build
    build("quick")                       # reports/quick/index.html
    build("fashion_grid", ceiling="fashion_ceiling", protocol="fashion_grid_pool")

Nothing here imports the training stack (torch), and nothing here creates a store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ganft.catalog import CLASS_NAMES
from ganft.paths import project_root
from ganft.redact import redact
from ganft.report.compare import write_compare_report
from ganft.report.curves import CURVE_METRIC, CURVES_CSV
from ganft.report.search import write_search_report
from ganft.report.text import ReportMeta, busy_seconds
from ganft.report.tidy import tidy_from_csv, tidy_runs
from ganft.report.write import staged, write_report
from ganft.study.mlflow_store import (
    CACHE_EXPERIMENT,
    MlflowStore,
    default_tracking_uri,
    experiment_names,
    sqlite_path,
)
from ganft.study.peek import run_hint
from ganft.study.status import optuna_frames, search_trials
from ganft.study.storage import damaged_journal
from ganft.study.stores import Stores


class NothingToReport(LookupError):
    """The study has no experiment or no finished trials in the store; the message says what to run."""


def study_runs(study: str, stores: Stores) -> pd.DataFrame:
    """The tidy finished trial runs of ``study`` (a name); NothingToReport, saying what to run, if
    there are none. A store that does not exist is not created."""
    db = sqlite_path(stores.tracking_uri)
    if db is not None and not Path(db).is_file():
        raise NothingToReport(f"no MLflow store at {db} yet (no study has run here); {run_hint(study, [])}")
    try:
        store = MlflowStore(stores.tracking_uri, study, create=False)
    except LookupError:
        known = [n for n in experiment_names(stores.tracking_uri) if n != CACHE_EXPERIMENT]
        raise NothingToReport(f"study {study!r} has no runs in {redact(stores.tracking_uri)}; "
                              f"{run_hint(study, known)}") from None
    df = tidy_runs(store.runs_frame())
    if df.empty:
        raise NothingToReport(f"study {study} has no finished trials yet; {run_hint(study, [])}")
    return df


def invocations(study: str, stores: Stores) -> tuple[float | None, list[str], str]:
    """Wall time of the study's `ganft study run` invocations (their parent runs, overlaps counted
    once), their distinct command lines as recorded (tag ``ganft.argv``, credentials redacted) and
    the machine the last one ran on (tag ``ganft.machine``)."""
    parents = MlflowStore(stores.tracking_uri, study, create=False).runs_frame(role="parent")
    commands: list[str] = []
    machine = ""
    if "tags.ganft.argv" in parents:
        for argv in parents.sort_values("start_time")["tags.ganft.argv"].dropna():
            parts = argv.split()
            launcher = ("ganft/cli.py", "ganft/__main__.py")  # `python -m ganft.cli` records the file
            if parts and (Path(parts[0]).name == "ganft" or parts[0].endswith(launcher)):
                parts[0] = "ganft"  # the console script's absolute path says nothing to a reader
            if " ".join(parts) not in commands:
                commands.append(" ".join(parts))
    if "tags.ganft.machine" in parents:
        known = parents.sort_values("start_time")["tags.ganft.machine"].dropna()
        machine = str(known.iloc[-1]) if len(known) else ""
    return busy_seconds(parents), commands, machine


def store_flags(stores: Stores) -> str:
    """The --storage / --tracking-uri flags a report command needs to find these stores again (none
    for the project's default ones), credentials redacted."""
    default = Stores(str(stores.root / "optuna-journal.log"), default_tracking_uri(stores.root), stores.root)
    given = (("storage", stores.storage, default.storage),
             ("tracking-uri", stores.tracking_uri, default.tracking_uri))
    return "".join(f" --{flag} {redact(value)}" for flag, value, usual in given if value != usual)


def _class_names(df: pd.DataFrame) -> dict[int, str]:
    if "classes" in df and df["classes"].notna().any():  # as the trials logged them (image folders)
        return dict(enumerate(json.loads(df["classes"].dropna().iloc[0])))
    datasets = df["data.dataset"].unique() if "data.dataset" in df else []
    return dict(enumerate(CLASS_NAMES.get(datasets[0], ()))) if len(datasets) == 1 else {}


def build_from_results(study: str, results: Path, out: Path | None = None,
                       margin: float | None = None) -> Path:
    """Rebuild a committed report from its own results.csv and what lies beside it (meta.json:
    command, wall time, machine, margin, ceiling study; ceiling.csv; importances.csv; the GAN sample
    grids), when the study's stores are gone. ``margin`` (accuracy, 0.01 = 1 pp) overrides the
    recorded one."""
    df = tidy_from_csv(results)
    meta_file = results.parent / "meta.json"
    facts = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta = ReportMeta(study=study, command=facts.get("command", ""), machine=facts.get("machine", ""),
                      wall_seconds=facts.get("wall_seconds"), class_names=_class_names(df),
                      margin=margin or facts.get("margin", ReportMeta.margin),
                      ceiling_study=facts.get("ceiling_study", ""))
    saved = results.parent / "importances.csv"  # Optuna's importances, as the report first had them
    importances = pd.read_csv(saved) if saved.is_file() else None
    ceiling_csv = results.parent / "ceiling.csv"
    ceiling = tidy_from_csv(ceiling_csv) if ceiling_csv.is_file() else None
    out = out or results.parent
    grid = facts.get("grid_trials")  # an Optuna grid: every trial was an enqueued point
    history = pd.DataFrame({"from_grid": [True] * grid}) if grid else None
    with staged(out) as new:
        kept: dict[str, dict[int, str]] = {"samples": {}, "copies": {}}  # GAN figures the report first
        for prefix, found in kept.items():  # had (they came from the stores)
            for png in sorted(results.parent.glob(f"{prefix}_n*.png")):
                if png.stem.removeprefix(f"{prefix}_n").isdigit():
                    shutil.copy(png, new / png.name)
                    found[int(png.stem.removeprefix(f"{prefix}_n"))] = png.name
        curves_csv = results.parent / CURVES_CSV
        curves = pd.read_csv(curves_csv) if curves_csv.is_file() else None
        page = write_report(df, new, meta, importances=importances, ceiling=ceiling, history=history,
                            samples=kept["samples"] or None, copies=kept["copies"] or None, curves=curves)
    return Path(os.path.abspath(out)) / page.name


def build(study: str, *, ceiling: str | None = None, protocol: str | None = None,
          stores: Stores | None = None, out: Path | None = None, margin: float = ReportMeta.margin) -> Path:
    """Write ``reports/<study>/`` (or ``out``) and return its index.html. ``ceiling``: a real-only
    study on the whole training split, drawn as a line; ``protocol``: the same grid under another
    ``data.validation``, for the protocol table; ``margin``: the equivalence margin (accuracy)."""
    stores = stores or Stores.resolve()
    df = study_runs(study, stores)
    wall, commands, machine = invocations(study, stores)
    commands = commands or [f"ganft study run studies/{study}.yaml"]
    extra: dict[str, pd.DataFrame] = {}
    for flag, other in (("ceiling", ceiling), ("protocol", protocol)):
        if other:
            extra[flag] = study_runs(other, stores)
            commands += invocations(other, stores)[1] or [f"ganft study run studies/{other}.yaml"]
    flags = "".join(f" --{flag} {other}" for flag, other in (("ceiling", ceiling), ("protocol", protocol))
                    if other) + store_flags(stores)
    with damaged_journal(study, stores.storage):  # a damaged line: say to run study repair
        history, importances = optuna_frames(study, stores.storage)
    out = out or project_root() / "reports" / study
    trials = search_trials(study, stores.storage)
    if len(history) and not history["from_grid"].any() and len(trials):  # a search, not a grid
        try:
            confirm = study_runs(f"{study}-confirm", stores)
        except NothingToReport:
            confirm = None
        meta = ReportMeta(study=study, command=" && ".join([*commands,
                                                            f"ganft report {study}{store_flags(stores)}"]),
                          machine=machine, wall_seconds=wall, class_names=_class_names(df))
        objective = trials.attrs.get("objective", "the objective")
        with staged(out) as new:
            page = write_search_report(df, trials, new, meta, objective=objective, history=history,
                                       importances=importances, confirm=confirm)
        return Path(os.path.abspath(out)) / page.name
    meta = ReportMeta(study=study, command=" && ".join([*commands, f"ganft report {study}{flags}"]),
                      machine=machine, wall_seconds=wall, ceiling_study=ceiling or "",
                      protocol_study=protocol or "", class_names=_class_names(df), margin=margin)
    with staged(out) as new:
        samples, copied = sample_grids(df, stores, study, new), copy_figures(df, stores, study, new)
        page = write_report(df, new, meta, ceiling=extra.get("ceiling"), history=history,
                            importances=importances, protocol=extra.get("protocol"), samples=samples,
                            copies=copied, curves=gan_curves(df, stores, study))
    return Path(os.path.abspath(out)) / page.name


def gan_curves(df: pd.DataFrame, stores: Stores, study: str) -> pd.DataFrame:
    """The ``gan/budget_kid`` points (run_id, step, budget_kid) of each generator that finished runs
    used and that logged its convergence curve (gan.curve_every): one curve per generator (tag
    ``gan.key``), credited to the first of those runs. The curve is read from the run that trained
    the generator (tag ``gan.cache`` miss), whatever became of that run: one killed after its
    generator was stored had logged the whole curve, and the finished rerun that reused the stored
    generator logs none. Runs without the tags (an older ganft) give their own curve."""
    if "run_id" not in df or f"{CURVE_METRIC}_last" not in df:
        return pd.DataFrame()
    store = MlflowStore(stores.tracking_uri, study, create=False)
    curved = df[df[f"{CURVE_METRIC}_last"].notna()]
    tagged = curved["gan_key"] if "gan_key" in curved else [None] * len(curved)
    keys = [k if isinstance(k, str) else None for k in tagged]  # None: a run from before the tag
    trained = store.generator_trainers() if any(keys) else {}
    rows, done = [], set()
    for run_id, key in zip(curved["run_id"], keys, strict=True):
        if key in done:
            continue
        for source in trained.get(key, [run_id]) if key else [run_id]:
            points = store.client.get_metric_history(source, CURVE_METRIC)
            if points:
                rows += [{"run_id": run_id, "step": m.step, "budget_kid": m.value} for m in points]
                if key:
                    done.add(key)
                break
    return pd.DataFrame(rows, columns=["run_id", "step", "budget_kid"])


def sample_grids(df: pd.DataFrame, stores: Stores, study: str, out: Path) -> dict[int, str]:
    """One GAN sample grid per N (``gan_samples.png`` of its lowest-seed GAN run, one row per
    class), copied into the report folder: N -> file name. Runs without the artifact are skipped."""
    return gan_figures(df, stores, study, out, "gan_samples.png", "samples")


def copy_figures(df: pd.DataFrame, stores: Stores, study: str, out: Path) -> dict[int, str]:
    """One copy figure per N (``nearest_train.png``: the samples nearest a budget training image,
    beside it), from its lowest-seed GAN run that scored quality: N -> file name."""
    return gan_figures(df, stores, study, out, "nearest_train.png", "copies")


def gan_figures(df: pd.DataFrame, stores: Stores, study: str, out: Path, artifact: str,
                prefix: str) -> dict[int, str]:
    """An artifact of the lowest-seed GAN run of each N that has it, copied into the report folder
    as ``{prefix}_n{N}.png``: N -> file name."""
    if "run_id" not in df or "synth.ratio" not in df:
        return {}
    gan = df["synth.ratio"] > 0
    if "synth.source" in df:  # the controls (oracle: real images) train no GAN
        gan &= df["synth.source"].fillna("gan") == "gan"
    gan_runs = df[gan].sort_values(["data.train_size", "seed", "synth.ratio"])
    store = MlflowStore(stores.tracking_uri, study, create=False)
    out.mkdir(parents=True, exist_ok=True)
    grids: dict[int, str] = {}
    for n, g in gan_runs.groupby("data.train_size", sort=True):
        name = f"{prefix}_n{int(n)}.png"
        for run_id in g["run_id"].head(3):  # a run may lack the artifact (a reused GAN): the next seed's
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    got = store.download(run_id, artifact, Path(tmp))
                    shutil.copy(got, out / name)
            except Exception:  # noqa: BLE001 - an artifact store that cannot be read: no grid, not no report
                continue
            grids[int(n)] = name
            break
    return grids


def build_compare(a: str, b: str, *, stores: Stores | None = None, out: Path | None = None) -> Path:
    """``reports/compare-A-vs-B/``: the same cells of two studies side by side."""
    stores = stores or Stores.resolve()
    df_a, df_b = study_runs(a, stores), study_runs(b, stores)
    machine = invocations(b, stores)[2] or invocations(a, stores)[2]
    meta = ReportMeta(study=f"{a} vs {b}", command=f"ganft report --compare {a} {b}", machine=machine,
                      wall_seconds=math.nan)
    out = out or project_root() / "reports" / f"compare-{a}-vs-{b}"
    with staged(out) as new:
        page = write_compare_report(df_a, df_b, new, a, b, meta)
    return Path(os.path.abspath(out)) / page.name
