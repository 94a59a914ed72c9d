"""Seconds per training epoch of aug_cnn's initial point on the full train split, in float32,
in mixed bfloat16 (the CPU's AMX/AVX512-BF16) and with XLA compilation, and in float32 at
smaller resolutions (what exploring at a lower resolution would save), each in its own
process (Keras' precision policy is global), one after the other in one run.

    .venv/bin/python bench/precision.py --data ../shared/data/chest_xray [--epochs 3] \
        [--smaller 96 64]

Prints a markdown table: the mean of the epochs after the first (which traces) and the
speed-up over float32 at --size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODES = ("float32", "mixed_bfloat16", "xla")


def one(mode: str, data: str, epochs: int, size: int) -> list[float]:
    import keras
    import keras_tuner as kt

    from pneumo_exp.config import load_config
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.data.pipeline import make_dataset
    from pneumo_exp.hypermodels import build_hypermodel

    if mode == "mixed_bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    cfg = load_config("aug_cnn", {"data.root": data, "data.image_size": size})
    train = load_training_data(cfg.data, cfg.search.seed).train
    hp = kt.HyperParameters()
    for name, value in cfg.search.initial_points[0].items():
        hp.Fixed(name, value)
    model = build_hypermodel(cfg, train.labels).build(hp)
    if mode == "xla":
        model.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=True)
    ds = make_dataset(train, cfg.train.batch_size, shuffle=True, seed=0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--smaller", type=int, nargs="*", default=[96, 64],
                        help="smaller resolutions to time in float32")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one process' mode
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one(args.mode, args.data, args.epochs, args.size)))
        return
    runs = [(mode, args.size) for mode in MODES] + [("float32", n) for n in args.smaller]
    results = {}
    for mode, size in runs:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--data", args.data,
                              "--epochs", str(args.epochs), "--size", str(size)],
                             capture_output=True, text=True, check=True).stdout
        seconds = json.loads(out.strip().splitlines()[-1])
        results[mode, size] = sum(seconds[1:]) / max(len(seconds) - 1, 1)
        print(f"{mode} {size} px: {seconds}", file=sys.stderr)
    print(f"| arithmetic | resolution | seconds per epoch ({args.epochs - 1} epochs after the "
          "first) | speed-up |\n|---|---|---|---|")
    for (mode, size), s in results.items():
        print(f"| {mode} | {size} px | {s:.1f} | {results['float32', args.size] / s:.2f}x |")

if __name__ == "__main__":
    main()
