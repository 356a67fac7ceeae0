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
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganft import __version__
from ganft.config import ConfigError
from ganft.keys import describe_keys
from ganft.study.schema import ReportConfig, check_study_name, find_study_file, load_study, resolve_study

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
                   "else fp32 (GPUs too: these small models are bound by kernel launches); "
                   "figures in bench/README.md (default: auto)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC memory format for conv models; auto: on CUDA, off on the CPU "
                   "(figures in bench/README.md) (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the models (slow to start, pays off on long runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganft", description="Does GAN data make a small-data "
                                     "classifier better? Run studies, then read their reports.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ganft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="run or inspect an Optuna study defined by a YAML file")
    ssub = study.add_subparsers(dest="study_command", required=True)
    run = ssub.add_parser("run", help="run every grid point not yet complete (rerun to resume)")
    run.add_argument("file", metavar="study",
                     help="study YAML file or name (studies/<name>.yaml), e.g. quick")
    _store_flags(run)
    _device_flags(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--workers", type=_positive, default=1, metavar="N",
                     help="worker processes on this machine, each with cores/N torch threads (default: 1)")
    run.add_argument("--threads", type=_positive, metavar="N",
                     help="torch threads per worker (default: the CPUs this process may use, minus those "
                     "other jobs keep busy, shared among the workers)")
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
    ssub.add_parser("keys", help="every config key a study file or grid can set, with its type and default")
    best = ssub.add_parser("best", help="a search's best config, as a base: block for a study file")
    best.add_argument("study", help="study YAML file or name")
    _store_flags(best)
    confirm = ssub.add_parser("confirm", help="re-run a search's best recipe and real only on fresh seeds, "
                              "evaluated on the test split (study <name>-confirm)")
    confirm.add_argument("study", help="study YAML file or name")
    confirm.add_argument("--seeds", type=_positive, metavar="N", help="fresh seeds (default: the study "
                         "file's confirm.seeds, else 5: 1000..1004)")
    confirm.add_argument("--workers", type=_positive, default=1, metavar="N",
                         help="worker processes on this machine, as for study run (default: 1)")
    confirm.add_argument("--no-progress", action="store_true", help="no progress bar")
    _store_flags(confirm)
    _device_flags(confirm)

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
    report.add_argument("--results", type=Path, metavar="CSV", help="rebuild from a report's own "
                        "results.csv (and the meta.json beside it) instead of the stores, e.g. "
                        "reports/gan_zoo/results.csv")
    report.add_argument("--margin", type=float, metavar="PP", help="equivalence margin in percentage "
                        "points: an arm within +-PP of real only by two one-sided t-tests is called "
                        "equivalent (default: the study file's report.margin, else 1)")

    pre = sub.add_parser("pretrain", help="train (once, cached) the source-dataset classifiers that "
                         "a study's classifier.init: pretrained trials start from")
    pre.add_argument("file", metavar="study", help="study YAML file or name, e.g. finetune_inits")
    _device_flags(pre)

    data = sub.add_parser("data", help="look at a study's dataset before a long study")
    dsub = data.add_subparsers(dest="data_command", required=True)
    check = dsub.add_parser("check", help="load the dataset of a study file, or an image folder: "
                            "per-split and per-class counts, image shape, cache location, a warning for a "
                            "split so small that one image moves accuracy by more than 2 pp; the same "
                            "one-line errors as a study")
    check.add_argument("path", metavar="PATH", help="study YAML file or name, or an image folder "
                       "(root/<class>/<image>, or root/train and root/test)")

    ui = sub.add_parser("ui", help="open the MLflow UI on the default store, at a study's runs table")
    ui.add_argument("study", nargs="?", help="study YAML file or name whose runs the printed address opens "
                    "(default: the study with the newest run)")
    ui.add_argument("--tracking-uri", help="MLflow backend store (default: sqlite:///mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this "
                    "machine only; the UI has no authentication, so expose it deliberately)")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on (default: 5000)")
    return parser


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While a command trains, SIGTERM (kill, a scheduler, a container's stop) stops it as Ctrl-C
    does: the running trial ends as interrupted, its MLflow run KILLED, the workers are told and
    waited for; a second signal during that clean-up is ignored (``workers.interrupt_once``). The
    handlers are restored afterwards (the command may run inside a longer-lived process)."""
    from ganft.study.workers import interrupt_once

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupt_once()
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _speed(args: argparse.Namespace) -> Any:
    """The speed settings of ``_device_flags``, as runtime.Speed."""
    from ganft.config import Speed

    return Speed(precision=args.precision, compile=args.compile,
                 channels_last={"auto": None, "on": True, "off": False}[args.channels_last])


def _stores(args: argparse.Namespace, **kw: Any) -> Any:
    from ganft.study.stores import Stores

    return Stores.resolve(args.storage, args.tracking_uri, **kw)


def cmd_study_run(args: argparse.Namespace) -> int:
    from ganft.redact import redact
    from ganft.study.noop import nothing_to_run
    from ganft.study.queue import check_config_sizes

    cfg = resolve_study(args.file)
    check_config_sizes(cfg)
    stores = _stores(args, heartbeat=args.heartbeat)
    size = f"a {cfg.sampler} search of {cfg.search.n_trials} trials" if cfg.search is not None \
        else f"{len(cfg.points())} grid points"
    log.info("study %s: %s; Optuna storage %s; MLflow %s; %d worker(s)", cfg.name, size,
             redact(stores.storage), redact(stores.tracking_uri), args.workers)
    done = nothing_to_run(cfg, stores)  # a complete study: said without loading MLflow or torch
    if done is not None:
        print(done)
        return 0
    from ganft.study.confirm import run_then_confirm

    ok = run_then_confirm(cfg, stores, device=args.device, progress=not args.no_progress,
                          workers_n=args.workers, speed=_speed(args), threads=args.threads)
    return 0 if ok else 1


def cmd_study_best(args: argparse.Namespace) -> int:
    from ganft.study.confirm import load_search
    from ganft.study.search import best_yaml

    cfg = resolve_study(args.study)
    try:
        print(best_yaml(load_search(cfg, _stores(args)), cfg), end="")
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def cmd_study_confirm(args: argparse.Namespace) -> int:
    from ganft.study.confirm import confirm_seeds, load_search, run_confirm

    cfg = resolve_study(args.study)
    stores = _stores(args)
    ok = run_confirm(cfg, stores, load_search(cfg, stores), confirm_seeds(cfg, args.seeds),
                     device=args.device, progress=not args.no_progress, workers_n=args.workers,
                     speed=_speed(args))
    return 0 if ok else 1


def cmd_study_status(args: argparse.Namespace) -> int:
    from ganft.study.status import stored_confirmation, study_status

    stores = _stores(args)
    try:
        cfg = resolve_study(args.study)
    except ConfigError:  # a search's confirmation has no file: ganft made it, its storage holds it
        cfg = stored_confirmation(args.study, stores)
        if cfg is None:
            raise
    lines, code = study_status(cfg, stores)
    print("\n".join(lines))
    return code


def cmd_study_repair(args: argparse.Namespace) -> int:
    from ganft.study.run import repair_study

    cfg = resolve_study(args.study)
    for note in repair_study(cfg, _stores(args)) or [f"study {cfg.name}: nothing to repair"]:
        print(note)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if bool(args.study) == bool(args.compare):
        print("ganft report: give a study, or --compare A B", file=sys.stderr)
        return 2
    if args.margin is not None and not 0 < args.margin <= 100:
        raise ConfigError(f"--margin {args.margin}: allowed: above 0, at most 100 (percentage points)")
    if args.study and not args.results:
        _unrun_study(_study_name(args.study), args.tracking_uri)
    from ganft.report.build import NothingToReport, build, build_compare, build_from_results

    try:
        if args.results:
            margin = args.margin / 100 if args.margin is not None else None
            index = build_from_results(_study_name(args.study), args.results, out=args.out, margin=margin)
        elif args.compare:
            index = build_compare(*(_study_name(s) for s in args.compare), stores=_stores(args), out=args.out)
        else:
            index = build(_study_name(args.study), ceiling=args.ceiling and _study_name(args.ceiling),
                          protocol=args.protocol and _study_name(args.protocol), stores=_stores(args),
                          out=args.out, margin=_margin(args))
    except NothingToReport as exc:
        print(f"ganft report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


def _unrun_study(study: str, tracking_uri: str | None) -> None:
    """A study without finished runs in a local store is said at once, with the command that runs it
    (before MLflow and the plotting stack are imported); a remote store is left to the report."""
    from ganft.study.peek import default_tracking_uri, finished_trials, run_hint

    counts = finished_trials(tracking_uri or default_tracking_uri())
    if counts is not None and not counts.get(study):
        raise ConfigError(f"study {study!r} has no finished runs yet; "
                          f"{run_hint(study, sorted(n for n in counts if n != study))}")


def _margin(args: argparse.Namespace) -> float:
    """The report's equivalence margin as an accuracy: --margin, else the study file's
    report.margin when there is a file for the study, else 1 pp."""
    if args.margin is not None:
        return args.margin / 100
    path = find_study_file(args.study)  # none: a study whose file is elsewhere (another machine's stores)
    return (load_study(path).report if path is not None else ReportConfig()).margin / 100


def _study_name(arg: str) -> str:
    """A study name from a name or a study file's path; a name follows the study files' rule, so a
    path-like one (``../x``) never writes outside reports/."""
    if arg.endswith((".yaml", ".yml")) or Path(arg).is_file():
        return load_study(arg).name
    return check_study_name(arg)


def cmd_study_keys(args: argparse.Namespace) -> int:
    print("\n".join(describe_keys()))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ganft.runtime import configure_speed
    from ganft.study.pretrain import pretrain_study

    configure_speed(_speed(args))
    for line in pretrain_study(resolve_study(args.file), args.device):
        print(line)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ganft.config import DataConfig
    from ganft.datasets import describe

    if Path(args.path).is_dir():  # an image folder, read as a study's `data: {dataset: imagefolder}` would
        print("\n".join(describe(DataConfig(dataset="imagefolder", root=args.path), budget=False)))
        return 0
    for data in resolve_study(args.path).datasets():
        print("\n".join(describe(data)))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from ganft.study.mlflow_store import serve_ui

    return serve_ui(args.tracking_uri, args.host, args.port,
                    study=args.study and _study_name(args.study))


def _check_home() -> None:
    """A GANFT_HOME that is not a folder is a typo or a mistake: said, never silently created (a
    new empty store would say "not started" of a study that ran)."""
    home = os.environ.get("GANFT_HOME")
    if home and not Path(home).expanduser().is_dir():
        why = ("is not a folder; give a folder" if Path(home).expanduser().exists() else
               f"no such folder; create it (mkdir -p {shlex.quote(home)})")
        raise ConfigError(f"GANFT_HOME {home}: {why}, or unset GANFT_HOME to use the default project root")


def main(argv: list[str] | None = None) -> int:
    from ganft.redact import redact, redact_logging, remember, remember_environment

    remember(*(sys.argv[1:] if argv is None else argv))  # however a driver quotes them later
    remember_environment()
    args = build_parser().parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    redact_logging()  # no credential reaches a log line, whoever logs it (MLflow, SQLAlchemy, ganft)
    handlers = {("study", "run"): cmd_study_run, ("study", "status"): cmd_study_status,
                ("study", "repair"): cmd_study_repair, ("study", "keys"): cmd_study_keys,
                ("study", "best"): cmd_study_best, ("study", "confirm"): cmd_study_confirm,
                ("report", None): cmd_report, ("ui", None): cmd_ui, ("pretrain", None): cmd_pretrain,
                ("data", "check"): cmd_data_check}
    handler = handlers[(args.command, getattr(args, "study_command", None) or getattr(args, "data_command",
                                                                                        None))]
    trains = handler in (cmd_study_run, cmd_study_confirm, cmd_pretrain)
    try:
        _check_home()
        with _stop_on_sigterm() if trains else contextlib.nullcontext():
            return handler(args)
    except ConfigError as exc:
        print(f"ganft: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nganft: interrupted; rerun the same command to continue where it stopped",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ganft study status NAME | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as exc:
        from ganft.study.storage import StudyError, disk_full

        if isinstance(exc, StudyError):  # the stores cannot be used as asked: one line, exit 2
            print(f"ganft: error: {redact(str(exc))}", file=sys.stderr)
            return 2
        if disk_full(exc):  # MLflow's, SQLite's or the journal's write failed: what to do, not how
            first = redact(str(exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
            print(f"ganft: error: the disk is full ({first}); free space and rerun the same command: "
                  f"finished points are kept, the interrupted ones run again", file=sys.stderr)
            return 1
        # anything else is unexpected: one line (credentials redacted), the traceback with -v
        first = redact(f"{type(exc).__name__}: {exc}").splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ganft: unexpected error: {first}\nganft: rerun with -v for the traceback; "
              f"`ganft study status STUDY` says what is stored", file=sys.stderr)
        if args.verbose:
            import traceback

            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr)
        return 1


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
