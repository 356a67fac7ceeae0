"""ganft command line: a thin argparse front over the library.

  ganft study run FILE      run every grid point of a study file not yet complete
  ganft study status STUDY  complete / failed / missing grid points, with reasons
  ganft study repair STUDY  fix a torn journal, fail trials of dead workers, end their MLflow runs
  ganft report STUDY        write reports/<study>/ from the MLflow runs
  ganft report --compare A B  the same cells of two studies side by side
  ganft ui                  the MLflow UI on the default store (127.0.0.1 unless --host says otherwise)
  ganft pretrain FILE       train the source classifiers a study's `classifier.init: pretrained` needs
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ganft.config import ConfigError, StudyConfig, load_study

log = logging.getLogger("ganft")


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage: a journal file path or an RDB URL such as "
                   "postgresql+psycopg2://user@host/db, password from PGPASSWORD or ~/.pgpass "
                   "(default: optuna-journal.log at the project root)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db at the "
                   "project root; http://host:5000 for a tracking server)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CPUs with native bf16 (AMX-BF16 or AVX512-BF16), "
                   "else fp32 (on GPUs too: bench/ measured bf16 slower for these small models); "
                   "see bench/README.md (default: auto)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC memory format for conv models; auto: on CUDA, where it is faster, off on "
                   "the CPU, where bench/ found no consistent gain (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the models (slow to start, pays off on long runs)")


def _configure_speed(args: argparse.Namespace) -> None:
    from ganft.runtime import Speed, configure_speed

    configure_speed(Speed(precision=args.precision, compile=args.compile,
                          channels_last={"auto": None, "on": True, "off": False}[args.channels_last]))


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
    _device_flags(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--workers", type=_positive, default=1, metavar="N",
                     help="worker processes on this machine, each with cores/N torch threads (default: 1)")
    run.add_argument("--heartbeat", type=_positive, default=30, metavar="SECONDS",
                     help="RDB storage: seconds between a trial's heartbeats; a trial with three missed "
                     "is failed and its point queued again (default: 30)")
    status = ssub.add_parser("status", help="complete / failed / missing grid points with reasons")
    status.add_argument("study", help="study YAML file or name (studies/<name>.yaml)")
    _store_flags(status)
    repair = ssub.add_parser("repair", help="make a torn journal readable, fail the trials of dead "
                             "workers and end their MLflow runs (study run does this by itself)")
    repair.add_argument("study", help="study YAML file or name (studies/<name>.yaml)")
    _store_flags(repair)

    report = sub.add_parser("report", help="write reports/<study>/ (index.html, index.md, CSVs, figures)")
    report.add_argument("study", nargs="?", help="study YAML file or name, e.g. quick")
    report.add_argument("--compare", nargs=2, metavar=("A", "B"), help="instead: the same cells of two "
                        "studies side by side with the difference of gains (B minus A) and its CI; "
                        "written to reports/compare-A-vs-B/")
    report.add_argument("--ceiling", metavar="STUDY", help="a real-only study on the full training split "
                        "(e.g. fashion_ceiling), drawn as the ceiling line")
    report.add_argument("--protocol", metavar="STUDY", help="the same grid under another data.validation "
                        "protocol (e.g. fashion_grid_pool): adds a table of real-only accuracy and the "
                        "ratio-1 gain per N under both")
    _store_flags(report)
    report.add_argument("--out", type=Path, help="output folder (default: reports/<study>/)")

    pre = sub.add_parser("pretrain", help="train (once, cached) the source-dataset classifiers that "
                         "a study's classifier.init: pretrained trials start from")
    pre.add_argument("file", help="study YAML file, e.g. studies/finetune_inits.yaml")
    _device_flags(pre)

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
    from ganft.study import Stores, check_config_sizes
    from ganft.study_run import run_study

    cfg = load_study(args.file)
    check_config_sizes(cfg)
    _configure_speed(args)
    stores = Stores.resolve(args.storage, args.tracking_uri, heartbeat=args.heartbeat)
    from ganft.tracking import redact

    log.info("study %s: %d grid points; Optuna storage %s; MLflow %s; %d worker(s)", cfg.name,
             len(cfg.points()), redact(stores.storage), redact(stores.tracking_uri), args.workers)
    summary = run_study(cfg, stores, device=args.device, progress=not args.no_progress,
                        workers_n=args.workers)
    if summary.ran == 0 and summary.complete == summary.total:
        print(f"study {cfg.name} is complete: {summary.complete} of {summary.total} grid points done; "
              f"nothing to run.")
    else:
        elsewhere = f"{summary.running} running in other workers, " if summary.running else ""
        print(f"study {cfg.name}: {summary.complete} of {summary.total} grid points complete, "
              f"{elsewhere}{len(summary.failed)} failed; this run: {summary.ran} trials, "
              f"{summary.gans_trained} GANs trained, {summary.seconds:.1f} s.")
    for ps in summary.failed:
        print(f"  failed {ps.name} ({ps.attempts} attempt(s), max_retries {cfg.max_retries}): {ps.reason}")
    if summary.workers_lost:
        print(f"  {summary.workers_lost} worker process(es) died; rerun the same command to finish")
    return 0 if summary.ok else 1


def cmd_study_status(args: argparse.Namespace) -> int:
    import optuna

    from ganft.study import Stores, open_storage, survey

    cfg = resolve_study(args.study)
    stores = Stores.resolve(args.storage, args.tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if "://" not in stores.storage and not Path(stores.storage).is_file():
            raise KeyError(cfg.name)  # no journal yet (opening one would create the file)
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
        if ps.state == "running" and ps.owner:
            extra = f"  (pid {ps.owner.get('pid')} on {ps.owner.get('host')})"
        print(f"  {ps.state:9s} {ps.name}{extra}")
    return 0 if counts["complete"] == len(states) else 1


def cmd_study_repair(args: argparse.Namespace) -> int:
    from ganft.study import Stores
    from ganft.study_run import repair_study

    cfg = resolve_study(args.study)
    notes = repair_study(cfg, Stores.resolve(args.storage, args.tracking_uri))
    for note in notes or [f"study {cfg.name}: nothing to repair"]:
        print(note)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ganft.data import CLASS_NAMES
    from ganft.report import ReportMeta, write_report
    from ganft.report_compare import write_compare_report
    from ganft.runtime import project_root
    from ganft.study import Stores

    if bool(args.study) == bool(args.compare):
        print("ganft report: give a study, or --compare A B", file=sys.stderr)
        return 2
    stores = Stores.resolve(args.storage, args.tracking_uri)
    if args.compare:
        (a, df_a), (b, df_b) = (_report_runs(s, stores.tracking_uri) for s in args.compare)
        if df_a is None or df_b is None:
            return 1
        out = args.out or project_root() / "reports" / f"compare-{a}-vs-{b}"
        meta = ReportMeta(study=f"{a} vs {b}", command=f"ganft report --compare {a} {b}",
                          machine=machine_description())
        print(f"report: {write_compare_report(df_a, df_b, out, a, b, meta)}")
        return 0
    name, df = _report_runs(args.study, stores.tracking_uri)
    if df is None:
        return 1
    ceiling, ceiling_name = None, ""
    wall, commands = _invocations(name, stores.tracking_uri)
    commands = commands or [f"ganft study run studies/{name}.yaml"]
    if args.ceiling:
        ceiling_name, ceiling = _report_runs(args.ceiling, stores.tracking_uri)
        if ceiling is None:
            return 1
        commands += _invocations(ceiling_name, stores.tracking_uri)[1] or [
            f"ganft study run studies/{ceiling_name}.yaml"]
    protocol, protocol_name = None, ""
    if args.protocol:
        protocol_name, protocol = _report_runs(args.protocol, stores.tracking_uri)
        if protocol is None:
            return 1
        commands += _invocations(protocol_name, stores.tracking_uri)[1] or [
            f"ganft study run studies/{protocol_name}.yaml"]
    flags = (f" --ceiling {ceiling_name}" if args.ceiling else "") + \
        (f" --protocol {protocol_name}" if args.protocol else "")
    command = " && ".join([*commands, f"ganft report {name}{flags}"])
    history, importances = _optuna_frames(name, stores.storage)
    datasets = df["data.dataset"].unique() if "data.dataset" in df else []
    names = CLASS_NAMES.get(datasets[0], ()) if len(datasets) == 1 else ()
    meta = ReportMeta(study=name, command=command, machine=machine_description(),
                      wall_seconds=wall,
                      ceiling_study=ceiling_name, protocol_study=protocol_name,
                      class_names=dict(enumerate(names)))
    out = args.out or project_root() / "reports" / name
    index = write_report(df, out, meta, ceiling=ceiling, history=history, importances=importances,
                         protocol=protocol)
    print(f"report: {index}")
    return 0


def _report_runs(study: str, uri: str) -> tuple[str, Any]:
    """(study name, tidy runs), or (name, None) after saying why there is nothing to report."""
    from ganft.report import tidy_runs
    from ganft.tracking import MlflowStore

    name = load_study(study).name if study.endswith((".yaml", ".yml")) or Path(study).is_file() else study
    try:
        store = MlflowStore(uri, name, create=False)
    except LookupError as exc:
        print(f"ganft report: {exc}; run `ganft study run studies/{name}.yaml` first", file=sys.stderr)
        return name, None
    df = tidy_runs(store.runs_frame())
    if df.empty:
        print(f"ganft report: study {name} has no finished trials yet", file=sys.stderr)
        return name, None
    return name, df


def _invocations(name: str, uri: str) -> tuple[float | None, list[str]]:
    """Wall time of the study's `ganft study run` invocations (their parent runs, overlaps counted
    once) and their distinct command lines as recorded (tag ``ganft.argv``, credentials redacted)."""
    from ganft.report import busy_seconds
    from ganft.tracking import MlflowStore

    parents = MlflowStore(uri, name, create=False).runs_frame(role="parent")
    commands: list[str] = []
    if "tags.ganft.argv" in parents:
        for argv in parents.sort_values("start_time")["tags.ganft.argv"].dropna():
            parts = argv.split()
            if parts and Path(parts[0]).name == "ganft":
                parts[0] = "ganft"  # the console script's absolute path says nothing to a reader
            if " ".join(parts) not in commands:
                commands.append(" ".join(parts))
    return busy_seconds(parents), commands


def _optuna_frames(name: str, storage: str) -> tuple[Any, Any]:
    """Optuna history and importances, or (None, None) where the storage has no such study."""
    from ganft.study import optuna_frames

    if "://" not in storage and not Path(storage).is_file():
        return None, None
    return optuna_frames(name, storage)


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"torch {torch.__version__}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ganft.data import splits_for
    from ganft.pretrain import ensure_pretrained, pretrain_key
    from ganft.runtime import pick_device

    cfg = load_study(args.file)
    _configure_speed(args)
    device = pick_device(args.device)
    needed = {}  # key -> (a trial config that needs it, the target image shape)
    for point in cfg.points() or [{}]:
        trial = cfg.trial_config(point)
        if trial.classifier.init == "pretrained":
            shape = splits_for(trial.data).image_shape
            needed.setdefault(pretrain_key(trial, shape), (trial, shape))
    if not needed:
        print(f"study {cfg.name}: no grid point uses classifier.init pretrained; nothing to pretrain")
    for key, (trial, shape) in needed.items():
        _, metrics, trained = ensure_pretrained(trial, shape, device)
        c = trial.classifier
        print(f"{'trained' if trained else 'cached'} {key}: {c.arch} (width {c.width}) on "
              f"{c.pretrained_source} at {'x'.join(map(str, shape))}, {c.pretrain_steps} steps, "
              f"source val acc {metrics['pretrain/val_acc']:.3f}")
    return 0


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
                ("study", "repair"): cmd_study_repair,
                ("report", None): cmd_report, ("ui", None): cmd_ui, ("pretrain", None): cmd_pretrain}
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
    except BrokenPipeError:  # `ganft study status NAME | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as exc:  # a stored study this file cannot continue: one line, non-zero
        from ganft.study import StudyError

        if isinstance(exc, StudyError):
            print(f"ganft: error: {exc}", file=sys.stderr)
            return 2
        raise


def console_main() -> None:
    """The ``ganft`` program: ``main`` with the process's arguments, then exit with its status."""
    code = main()
    # The command's work is over (done, or stopped and reported): a Ctrl-C that lands while the
    # interpreter shuts down (MLflow's and multiprocessing's exit hooks) has nothing left to stop
    # and must not turn a finished run's exit status into a death by signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
