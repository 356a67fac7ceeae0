"""The first hour, round 2 (issue 25): commands that say what to do at once, keys that describe
themselves, a did-you-mean everywhere, a data check that takes a folder and warns of tiny splits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image
from test_first_hour import ONE_POINT as ONE
from test_first_hour import studies  # noqa: F401 (a fixture)

from ganft.cli import main
from ganft.tracker import MIN_GRID_WIDTH


def test_report_of_a_study_that_never_ran_says_what_to_run_at_once(studies: Path) -> None:  # noqa: F811
    """Exit 2 and the command, decided before MLflow or the plotting stack is imported (a fresh
    interpreter shows what the command loaded), and no store is created."""
    code = ("import sys; from ganft.cli import main; rc = main(['report', 'one']); "
            "print(rc, *(m in sys.modules for m in ('mlflow', 'matplotlib', 'seaborn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GANFT_HOME": str(studies)})
    assert out.stdout.split() == ["2", "False", "False", "False"], out.stderr
    assert out.stderr.strip() == ("ganft: error: study 'one' has no finished runs yet; "
                                  "run `ganft study run one` first")
    assert sorted(p.name for p in studies.iterdir()) == ["studies"]  # no mlflow.db, no journal


def test_report_of_an_unknown_study_lists_those_with_runs(
        studies: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert main(["study", "run", "one", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", "onne"]) == 2
    err = capsys.readouterr().err
    assert "study 'onne' has no finished runs yet; there is no studies/onne.yaml either (studies with runs " \
           "here: one; study files: one)" in err
    assert main(["report", "one"]) == 0  # the same peek lets a study with runs through
    md = (studies / "reports" / "one" / "index.md").read_text()
    assert re.search(r"\b1 pairs\b", md) is None and "1 pair)" in md  # one seed: singular
    client = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("one").experiment_id],
                             filter_string="tags.`ganft.grid_point` = 'r1.0'")[0]
    assert (run.data.params["data.image_size"], run.data.params["data.channels"]) == ("8", "1")  # digits
    grid = Image.open(client.download_artifacts(run.info.run_id, "gan_samples.png", str(studies)))
    tile_w = 8 * (8 + 1) + 1  # make_grid: 8 images of 8 px a row, 1 px padding
    scale = -(-MIN_GRID_WIDTH // tile_w)
    assert grid.height == (2 * 10 * (8 + 1) + 1) * scale  # a real and a generated row for each of 10 classes


def test_study_keys_prints_every_choice_and_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    from ganft.keys import config_keys

    assert main(["study", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads, descriptions = lines[0::2], lines[1::2]
    assert [h.split(":")[0] for h in heads] == config_keys()  # every key, in order
    assert all(d.startswith("    ") and len(d.strip()) > 15 for d in descriptions)  # one line each
    assert "data.dataset: one of: digits, fashion-mnist, mnist, cifar10, imagefolder; default digits" in heads
    assert "gan.diffaugment: list of: translation, cutout, color; default translation" in heads
    assert "data.unlabelled_size: int or all; default 0" in heads
    assert "synth.real_fraction: float or null; default null" in heads


@pytest.mark.parametrize(("where", "typo", "hint"), [
    ("base", "  quality: {enabeld: true}\n", "base.quality.enabeld: unknown key; did you mean enabled?"),
    ("base", "  gann: {steps: 6}\n", "base.gann: unknown key; did you mean gan"),
    ("study", "bsae: {}\n", "bsae: unknown key; did you mean base?"),
])
def test_a_typo_in_any_key_gets_a_did_you_mean(studies: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
                                               where: str, typo: str, hint: str) -> None:
    text = ONE.replace("base:\n", f"base:\n{typo}") if where == "base" else ONE + typo
    (studies / "studies" / "typo.yaml").write_text(text.replace("name: one", "name: typo"))
    assert main(["study", "run", "typo", "--no-progress"]) == 2
    assert hint in capsys.readouterr().err
    assert sorted(p.name for p in studies.iterdir()) == ["studies"]  # refused before any store


def test_data_check_takes_an_image_folder_and_warns_of_a_tiny_split(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_datasets import image_folder

    small = image_folder(tmp_path / "small", {"cat": 30, "dog": 30})  # test split: 20% = 12 images
    assert main(["data", "check", str(small)]) == 0
    out = capsys.readouterr().out
    assert f"imagefolder from {small}: 1x28x28 images, 2 classes" in out
    assert "warning: the test split has 12 images, so one image moves its accuracy by 8.3 pp (more than " \
           "2 pp)" in out
    big = image_folder(tmp_path / "big", {"cat": 130, "dog": 130}, size_of=lambda i: (8, 8))  # 52 test images
    assert main(["data", "check", str(big)]) == 0
    assert "warning" not in capsys.readouterr().out
    (studies_dir := home / "studies").mkdir()
    (studies_dir / "one.yaml").write_text(ONE.replace("train_size: 30", "train_size: 100, validation: "
                                                      "from-budget"))
    assert main(["data", "check", "one"]) == 0  # a study file still works; 20 validation images warn
    assert "warning: the validation set (from-budget) has 20 images, so one image moves its accuracy by " \
           "5.0 pp" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2  # neither a folder nor a study


def test_sample_grid_puts_real_budget_images_above_each_class_row() -> None:
    import torch

    from ganft.gan_train import SAMPLES_PER_CLASS as PER
    from ganft.images import Images
    from ganft.trial_gan import real_beside_generated

    samples = torch.rand(3 * PER, 1, 8, 8) * 2 - 1  # 3 classes, class by class
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 9)  # class 1 has fewer budget images than a row
    real = Images(torch.arange(len(y)).float().view(-1, 1, 1, 1).expand(-1, 1, 8, 8) / 100, y)
    rows, labels = real_beside_generated(samples, real, ("a", "b", "c"))
    assert rows.shape == (6 * PER, 1, 8, 8)
    assert labels == ["a (real)", "a (GAN)", "b (real)", "b (GAN)", "c (real)", "c (GAN)"]
    row = rows.view(6, PER, 1, 8, 8)
    assert torch.equal(row[0], real.x[:PER]) and torch.equal(row[4], real.x[13:13 + PER])  # same class
    assert torch.equal(row[2, :3], real.x[10:13]) and (row[2, 3:] == 1).all()  # blank (white) tiles
    assert torch.equal(row[3], samples[PER:2 * PER])
    _, labels = real_beside_generated(samples, real, ("a", "b", "c"), conditional=False)
    assert labels[1::2] == ["GAN (no class)"] * 3


def test_the_readme_documents_every_flag_of_every_command() -> None:
    """The README's command table has a row per command that names every flag its --help shows."""
    import argparse

    from ganft.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Commands and flags", 1)[1].split("\n## ", 1)[0]
    rows = {" ".join(w for w in line.split("`")[1].split()[1:] if w.islower()): line  # "study run": row
            for line in table.splitlines() if line.startswith("| `ganft ")}
    seen = 0

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        nonlocal seen
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and action.dest not in ("help", "verbose", "version"):
                row = rows.get(" ".join(path))
                assert row is not None, f"no README row for ganft {' '.join(path)}"
                flag = action.option_strings[-1]
                assert f"`{flag}" in row, f"{flag} of ganft {' '.join(path)} is not in its README row"
                seen += 1

    walk(build_parser(), [])
    assert seen >= 40  # the walk reached every subcommand (40 flags at the time of writing)
    assert "`-v` / `--verbose`" in table and "`--version`" in table


def test_ganft_ui_sizes_its_server_to_the_machine() -> None:
    from ganft.study.mlflow_store import ui_workers

    assert [ui_workers(n) for n in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]  # MLflow's own default: 4


@pytest.mark.slow  # four runs of a study and a fresh interpreter: about 6 s on an idle 2-core machine
def test_a_rerun_of_a_complete_study_says_so_without_mlflow_or_torch(
        studies: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """The no-op rerun (issue 25): one line, exit 0, decided before MLflow or torch is imported. Where
    the full run would change something (here a trial run no longer FINISHED), it is not taken."""
    import sqlite3

    assert main(["study", "run", "one", "--no-progress"]) == 0
    capsys.readouterr()
    code = ("import sys; from ganft.cli import main; rc = main(['study', 'run', 'one', '--no-progress']); "
            "print(rc, *(m in sys.modules for m in ('mlflow', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GANFT_HOME": str(studies)})
    assert out.stdout.splitlines() == ["study one is complete: 2 of 2 grid points done; nothing to run.",
                                       "0 False False"], out.stderr
    with sqlite3.connect(studies / "mlflow.db") as conn:  # one result's run is gone from the store
        conn.execute("UPDATE runs SET status = 'KILLED' WHERE name = 'r1.0'")
    assert main(["study", "run", "one", "--no-progress"]) == 0  # the full run: the point runs again
    assert "2 of 2 grid points complete, 0 failed; this run: 1 trial" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("one").experiment_id],
                              filter_string="tags.`ganft.grid_point` = 'r1.0'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert main(["study", "run", "one", "--no-progress"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    # an invocation's parent run left RUNNING by a killed process: the full run closes it
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    with sqlite3.connect(studies / "mlflow.db") as conn:
        parent = "(SELECT run_uuid FROM tags WHERE key = 'ganft.role' AND value = 'parent' LIMIT 1)"
        conn.execute(f"UPDATE runs SET status = 'RUNNING' WHERE run_uuid = {parent}")
        conn.execute(f"UPDATE tags SET value = ? WHERE key = 'ganft.pid' AND run_uuid = {parent}", (gone,))
    assert main(["study", "run", "one", "--no-progress"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert not [r for r in client.search_runs([client.get_experiment_by_name("one").experiment_id])
                if r.info.status == "RUNNING"]
