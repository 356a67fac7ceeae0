"""How long an image folder takes to load: the first time (decoding every file) and the second
(from ganft's tensor cache), for a folder of --images small PNGs written here.

    python bench/folder_load.py                 # 10,000 32x32 PNGs in 10 classes
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from cmdline import command_line  # bench/cmdline.py
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GANFT_HOME"] = tmp
        from ganft import datasets
        from ganft.config import DataConfig

        rng = np.random.default_rng(0)
        root = Path(tmp) / "images"
        for i in range(args.images):
            folder = root / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
        cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=28)
        times = []
        for _ in range(2):
            datasets.load.cache_clear()  # a new process: only the disk cache is there
            t0 = time.perf_counter()
            splits = datasets.load(cfg)
            times.append(time.perf_counter() - t0)
    print(f"| images | first load (decode) s | second load (cache) s |\n| ---: | ---: | ---: |\n"
          f"| {len(splits.train) + len(splits.test):,} | {times[0]:.2f} | {times[1]:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"command": command_line(), "images": args.images,
                                         "first_s": times[0], "second_s": times[1]}, indent=2))


if __name__ == "__main__":
    main()
