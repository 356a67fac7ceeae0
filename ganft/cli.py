"""ganft command line: a thin argparse front over the library.

  ganft study run FILE      run every grid point of a study file not yet complete
  ganft study status STUDY  complete / failed / missing grid points, with reasons
  ganft report STUDY        write reports/<study>/ from the MLflow runs
  ganft ui                  the MLflow UI on the default store (127.0.0.1 unless --host says otherwise)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

from ganft.config import ConfigError, StudyConfig, load_study

log = logging.getLogger("ganft")


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage: a journal file path or an RDB URL such as "
                   "postgresql+psycopg2://user:pass@host/db (default: optuna-journal.log at the "
                   "project root)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db at the "
                   "project root; http://host:5000 for a tracking server)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganft", description="Does GAN data make a small-data "
                                     "classifier better? Run studies, then read their reports.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="run or inspect an Optuna study defined by a YAML file")
    ssub = study.add_subparsers(dest="study_command", required=True)
    run = ssub.add_parser("run", help="run every grid point not yet complete (rerun to resume)")
    run.add_argument("file", help="study YAML file, e.g. studies/quick.yaml")
    _store_flags(run)
    run.add_argument("--device", default="auto",
                     help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default: auto)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    status = ssub.add_parser("status", help="complete / failed / missing grid points with reasons")
    status.add_argument("study", help="study YAML file or name (studies/<name>.yaml)")
    _store_flags(status)

    report = sub.add_parser("report", help="write reports/<study>/ (index.html, index.md, CSVs, figures)")
    report.add_argument("study", help="study YAML file or name, e.g. quick")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db "
                        "at the project root)")
    report.add_argument("--out", type=Path, help="output folder (default: reports/<study>/)")

    ui = sub.add_parser("ui", help="open the MLflow UI on the default store")
    ui.add_argument("--tracking-uri", help="MLflow backend store (default: sqlite:///mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this "
                    "machine only; the UI has no authentication, so expose it deliberately)")
    ui.add_argument("--port", type=int, default=5000)
    return parser


def resolve_study(arg: str) -> StudyConfig:
    """A YAML path, or a name looked up as studies/<name>.yaml here or at the project root."""
    from ganft.runtime import project_root

    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_study(path)
    for folder in (Path.cwd() / "studies", project_root() / "studies"):
        cand = folder / f"{arg}.yaml"
        if cand.is_file():
            return load_study(cand)
    known = sorted(p.stem for p in (project_root() / "studies").glob("*.yaml"))
    raise ConfigError(f"no study file for {arg!r}; give a path or one of: {', '.join(known) or 'none'}")


def cmd_study_run(args: argparse.Namespace) -> int:
    from ganft.study import Stores, check_config_sizes, run_study

    cfg = load_study(args.file)
    check_config_sizes(cfg)
    stores = Stores.resolve(args.storage, args.tracking_uri)
    from ganft.tracking import redact

    log.info("study %s: %d grid points; Optuna storage %s; MLflow %s", cfg.name, len(cfg.points()),
             redact(stores.storage), redact(stores.tracking_uri))
    summary = run_study(cfg, stores, device=args.device, progress=not args.no_progress)
    if summary.ran == 0 and summary.complete == summary.total:
        print(f"study {cfg.name} is complete: {summary.complete} of {summary.total} grid points done; "
              f"nothing to run.")
    else:
        print(f"study {cfg.name}: {summary.complete} of {summary.total} grid points complete, "
              f"{len(summary.failed)} failed; this run: {summary.ran} trials, "
              f"{summary.gans_trained} GANs trained, {summary.seconds:.1f} s.")
    for ps in summary.failed:
        print(f"  failed {ps.name} ({ps.attempts} attempt(s), max_retries {cfg.max_retries}): {ps.reason}")
    return 0 if summary.complete == summary.total else 1


def cmd_study_status(args: argparse.Namespace) -> int:
    import optuna

    from ganft.study import Stores, open_storage, survey

    cfg = resolve_study(args.study)
    stores = Stores.resolve(args.storage, args.tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(stores.storage))
    except KeyError:
        print(f"study {cfg.name}: not started ({len(cfg.points())} grid points missing)")
        return 1
    states = survey(study, cfg)
    kinds = ("complete", "running", "queued", "failed", "missing")
    counts = {k: sum(ps.state == k for ps in states) for k in kinds}
    print(f"study {cfg.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(states)}")
    for ps in states:
        extra = f"  ({ps.attempts} attempt(s)) {ps.reason}" if ps.state == "failed" else ""
        print(f"  {ps.state:9s} {ps.name}{extra}")
    return 0 if counts["complete"] == len(states) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from ganft.report import ReportMeta, tidy_runs, write_report
    from ganft.runtime import project_root
    from ganft.tracking import MlflowStore, default_tracking_uri

    name = args.study
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        name = load_study(name).name
    uri = args.tracking_uri or default_tracking_uri(project_root())
    try:
        store = MlflowStore(uri, name, create=False)
    except LookupError as exc:
        print(f"ganft report: {exc}; run `ganft study run studies/{name}.yaml` first", file=sys.stderr)
        return 1
    df = tidy_runs(store.runs_frame())
    if df.empty:
        print(f"ganft report: study {name} has no finished trials yet", file=sys.stderr)
        return 1
    out = args.out or project_root() / "reports" / name
    meta = ReportMeta(study=name, command=f"ganft study run studies/{name}.yaml && ganft report {name}",
                      machine=machine_description())
    index = write_report(df, out, meta)
    print(f"report: {index}")
    return 0


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"torch {torch.__version__}")


def cmd_ui(args: argparse.Namespace) -> int:
    from ganft.runtime import project_root
    from ganft.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(project_root())
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)")
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    handlers = {("study", "run"): cmd_study_run, ("study", "status"): cmd_study_status,
                ("report", None): cmd_report, ("ui", None): cmd_ui}
    handler = handlers[(args.command, getattr(args, "study_command", None))]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"ganft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nganft: interrupted; rerun the same command to continue where it stopped",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a stored study this file cannot continue: one line, non-zero
        from ganft.study import StudyError

        if isinstance(exc, StudyError):
            print(f"ganft: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
