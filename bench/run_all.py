"""Run every benchmark on this machine and regenerate the results tables in bench/README.md.

    python bench/run_all.py                  # CPU: throughput, peak, study times -> results/<tag>/
    python bench/run_all.py --render-only    # rebuild the README tables from bench/results/
    python bench/run_all.py --tag h200 --skip-studies --scale 20   # on a GPU machine (no MLflow needed)
    python bench/run_all.py --smoke --tag smoke   # every script at a tiny scale: shows they run, measures nothing

Each machine's figures are saved as JSON under bench/results/<tag>/ and every machine found there
becomes a row; a machine kind with no results shows "not measured".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
EXPECTED = {"cpu": "2-core CPU (the development and CI machine)", "h200": "NVIDIA H200 GPU"}


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def load(tag: str, name: str) -> dict | None:
    path = RESULTS / tag / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def throughput_rows(tag: str) -> list[str]:
    t = load(tag, "throughput")
    if t is None:
        return [f"| {EXPECTED.get(tag, tag)} | `python bench/throughput.py` | not measured | | |"]
    fig = t["figures"]
    rows = []
    for name, value in fig.items():
        stage = name.split("/")[0]
        ratio = value / fig[f"{stage}/seed reference"]
        rows.append(f"| {t['machine']} | `{t['command']}` | {name}: {value:,.0f} images/s | {ratio:.2f}x |")
    if "auto_precision" in t:
        rows.append(f"| {t['machine']} | | `--precision auto` picks {t['auto_precision']} here | |")
    return rows


def study_rows(tag: str) -> list[str]:
    s = load(tag, "study_time")
    if s is None:
        return [f"| {EXPECTED.get(tag, tag)} | not measured | | | | | | |"]
    return [f"| {tag} ({s['cores']} cores) | {r['study']} | {r['workers']} | {r['wall_s']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['gans_trained']} of {r['points']} trials | {r['trials_per_hour']:.0f} | "
            f"{r['lock_errors']} |" for r in s["rows"]]


def peak_rows(tag: str) -> list[str]:
    p = load(tag, "peak")
    if p is None:
        return [f"| {EXPECTED.get(tag, tag)} | not measured | | | | |"]
    rows = [f"| {tag} | {p['matmul_fp32_gflops']:,.0f} | {p['matmul_bf16_gflops']:,.0f} | ganft default | "
            f"{p['gan_step_gflop']:.2f} | {p['gan_step_gflops']:,.1f} "
            f"({100 * p['gan_step_gflops'] / p['matmul_fp32_gflops']:.0f}% of fp32 matmul) |"]
    if "seed_step_gflop" in p:
        rows.append(f"| {tag} | | | seed-dcgan 64x64 | {p['seed_step_gflop']:.2f} | {p['seed_step_gflops']:,.1f} "
                    f"({100 * p['seed_step_gflops'] / p['matmul_fp32_gflops']:.0f}% of fp32 matmul) |")
    return rows


def settings_rows(tag: str) -> list[str]:
    s = load(tag, "settings")
    if s is None:
        return [f"| {EXPECTED.get(tag, tag)} | not measured | |"]
    return [f"| {tag} | {name} | {value:.3f} |" for name, value in s.items()]


def machine_rows(tag: str) -> list[str]:
    m = load(tag, "machine")
    if m is None:  # figures saved before run_all recorded the machine: throughput names it
        t = load(tag, "throughput")
        return [f"| {tag} | {t['machine'] if t else EXPECTED.get(tag, tag)} | not recorded |"]
    return [f"| {tag} | {m['machine']} | {m['date']} |"]


def save_machine(out: Path) -> None:
    """Which machine the figures under ``out`` come from: ganft's description and the CPU model."""
    import platform
    import time

    from ganft.runtime import machine_description

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() \
        else platform.processor()
    (out / "machine.json").write_text(json.dumps({"machine": f"{cpu}; {machine_description()}",
                                                  "date": time.strftime("%Y-%m-%d")}, indent=2))


def render() -> None:
    tags = sorted({*EXPECTED, *(p.name for p in RESULTS.glob("*") if p.is_dir())})
    lines = [BEGIN, "", "**Machines** (where each tag's figures were measured, and when)", "",
             "| tag | machine | measured |", "| --- | --- | --- |"]
    lines += [row for tag in tags for row in machine_rows(tag)]
    lines += ["", "**Throughput** (images per second at batch 64; ratio = this row / the seed "
             "reference of the same machine and run)", "",
             "| machine | command | figure | vs seed reference |", "| --- | --- | --- | ---: |"]
    lines += [row for tag in tags for row in throughput_rows(tag)]
    lines += ["", "**Whole studies** (`python bench/study_time.py`, fresh stores and GAN cache each)", "",
              "| machine | study | workers | wall s | peak RSS MiB | GANs trained | trials/hour | lock errors |",
              "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    lines += [row for tag in tags for row in study_rows(tag)]
    lines += ["", "**Physical limit** (`python bench/peak.py`)", "",
              "| machine | matmul fp32 GFLOP/s | matmul bf16 GFLOP/s | GAN step | GFLOP per step | GFLOP/s reached |",
              "| --- | ---: | ---: | --- | ---: | --- |"]
    lines += [row for tag in tags for row in peak_rows(tag)]
    lines += ["", "**Speed settings, before / after** (`python bench/settings.py`; medians of interleaved "
              "rounds)", "", "| machine | measurement | value |", "| --- | --- | ---: |"]
    lines += [row for tag in tags for row in settings_rows(tag)]
    lines += ["", END]
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + "\n".join(lines) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default="cpu", help="results folder name for this machine")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--skip-studies", action="store_true", help="no whole-study runs (needs MLflow)")
    parser.add_argument("--scale", default="1", help="step multiplier for throughput.py")
    parser.add_argument("--root", help="Fashion-MNIST IDX folder for throughput.py and settings.py")
    parser.add_argument("--smoke", action="store_true", help="every script at a tiny scale (one round, a "
                        "few steps, bench/smoke.yaml as the study): shows the scripts run; its figures mean nothing")
    args = parser.parse_args()
    if not args.render_only:
        out = RESULTS / args.tag
        out.mkdir(parents=True, exist_ok=True)
        save_machine(out)
        extra = ["--root", args.root] if args.root else []
        tiny = {"throughput.py": ["--rounds", "1", "--scale", "0.1"], "peak.py": ["--size", "256", "--reps", "2"],
                "settings.py": ["--rounds", "1", "--scale", "0.1"],
                "study_time.py": ["--studies", str(HERE / "smoke.yaml"), "--workers", "1"]} if args.smoke else {}
        run("throughput.py", "--json", str(out / "throughput.json"), "--scale", args.scale, *extra,
            *tiny.get("throughput.py", []))
        run("peak.py", "--json", str(out / "peak.json"), *tiny.get("peak.py", []))
        run("settings.py", "--json", str(out / "settings.json"), *extra, *tiny.get("settings.py", []))
        if not args.skip_studies:
            run("study_time.py", "--json", str(out / "study_time.json"), *tiny.get("study_time.py", []))
    render()


if __name__ == "__main__":
    main()
