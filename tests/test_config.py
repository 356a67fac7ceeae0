"""Bad study files stop before any work: one line naming the key and what is allowed, exit 2,
and nothing written to the stores."""

from pathlib import Path

import pytest

from ganft.cli import main
from ganft.config import ConfigError, TrialConfig
from ganft.keys import flatten, with_overrides
from ganft.study.schema import load_study

GOOD = """\
name: ok
base:
  data: {dataset: digits}
  gan: {steps: 10, lr_d: 1e-3}
grid:
  synth.ratio: [0, 1]
"""

BAD = {
    "unknown key": ("name: x\nbase:\n  gan: {stepz: 10}\n",
                    r"base\.gan\.stepz: unknown key; did you mean steps, d_steps\? "
                    r"allowed: arch, loss, steps"),
    "wrong type": ("name: x\nbase:\n  gan: {steps: many}\n",
                   r"base\.gan\.steps: Input should be a valid integer.*'many'"),
    "out of range": ("name: x\nbase:\n  synth: {ratio: -1}\n",
                     r"base\.synth\.ratio: Input should be greater than or equal to 0"),
    "unknown dataset": ("name: x\nbase:\n  data: {dataset: cifar100}\n",
                        r"base\.data\.dataset: Input should be 'digits', 'fashion-mnist', 'mnist', "
                        r"'cifar10' or 'imagefolder'"),
    "unknown variant": ("name: x\nbase:\n  gan: {loss: wgan}\n",
                        r"base\.gan\.loss: Input should be 'ns'"),
    "unknown augment": ("name: x\nbase:\n  gan: {diffaugment: [rotate]}\n",
                        r"base\.gan\.diffaugment\[0\]: Input should be 'translation'"),
    "yaml syntax": ("name: x\nbase:\n  gan: {steps: 10\n", r"YAML syntax error at line \d+, column \d+"),
    "duplicate key": ("name: x\nname: y\n", r"line 2: duplicate key 'name'"),
    "unknown grid key": ("name: x\ngrid:\n  gan.lr: [1e-3]\n",
                         r"grid: unknown config key 'gan\.lr'; did you mean gan\.lr_g, gan\.lr_d.*"
                         r"`ganft study keys` lists every key"),
    "bad grid value": ("name: x\ngrid:\n  synth.ratio: [0, 1, -2]\n",
                       r"grid\.synth\.ratio\[2\]: Input should be greater than or equal to 0"),
    "empty grid list": ("name: x\ngrid:\n  seed: []\n", r"grid: seed: needs at least one value"),
    "bad name": ("name: 'my study!'\n", r"name: String should match pattern"),
    "not a mapping": ("- a\n- b\n", r"a study file is a mapping"),
    "train size too big": ("name: x\ngrid:\n  data.train_size: [50, 5000]\n",
                           r"data\.train_size: 5000 is out of range for digits with data\.validation "
                           r"none; allowed: 10\.\.1437"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_file_exits_2_with_one_line_naming_the_key(
        case: str, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, pattern = BAD[case]
    path = home / "bad.yaml"
    path.write_text(text)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ganft: error: ")
    import re

    assert re.search(pattern, err), err
    assert sorted(p.name for p in home.iterdir()) == ["bad.yaml"]  # no store, cache or artifact


def test_scientific_notation_is_a_float_and_flattened_keys_are_dotted(home: Path) -> None:
    path = home / "ok.yaml"
    path.write_text(GOOD)
    cfg = load_study(path)
    assert cfg.base.gan.lr_d == 1e-3 and isinstance(cfg.base.gan.lr_d, float)
    flat = flatten(cfg.trial_config({"synth.ratio": 1}))
    assert flat["gan.lr_d"] == 1e-3 and flat["synth.ratio"] == 1.0
    assert flat["gan.diffaugment"] == "translation" and "classifier.steps" in flat
    assert [p["synth.ratio"] for p in cfg.points()] == [0, 1]


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'gan.nope'"):
        with_overrides(TrialConfig(), {"gan.nope": 1})
    assert with_overrides(TrialConfig(), {"seed": 3}).seed == 3


def test_bad_device_flag_stops_before_work(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = home / "ok.yaml"
    path.write_text(GOOD)
    assert main(["study", "run", str(path), "--device", "tpu"]) == 2
    assert "--device tpu" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir()) == ["ok.yaml"]


def test_missing_file_is_a_clear_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "run", str(home / "nope.yaml")]) == 2
    assert "cannot read study file" in capsys.readouterr().err
