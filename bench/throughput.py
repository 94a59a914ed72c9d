"""Benchmark: where a trial's time goes, and how fast it trains.

    .venv/bin/python bench/throughput.py --data ../shared/data/chest_xray            # all
    .venv/bin/python bench/throughput.py --data ../shared/data/chest_xray --only trial --size 96

The default `aug_cnn` family at its given point (experiments/aug_cnn.yaml, the first of
`search.initial_points`), on the real train and validation splits (decoded cache), with the
search's thread count (`train.threads`):

- `trial`: what a trial does each epoch: the hypermodel's `fit` on the search's tf.data
  batches with the search's callbacks (validation figures, early stopping, the cosine
  schedule). Images/s of train per epoch, first epoch (tracing, compiling) apart; each
  epoch split into its training part and its end-of-epoch callbacks.
- `parts`: the split of a train step by TensorFlow's profiler (op time of the
  augmentation, the convolutions, batch normalization, pooling, ... forward and backward,
  the optimizer's update, the loss and metrics, tf.data), its wall time against its op
  time (the rest is Python and Keras between ops), and the validation callback's seconds.
- `alternatives` (this checkout's code only): the train step's milliseconds with what was
  tried and not taken (XLA, augmentation in tf.data, `steps_per_execution`, mixed bf16),
  in turn with the search's own.
- `flops`: the network's forward and backward FLOPs per image (counted from the Conv2D and
  Dense layers: the backward pass is twice the forward but for the first convolution, whose
  input needs no gradient; TensorFlow's profiler counts the forward graph too), against the
  CPU's fp32 peak (cores x clock x FLOPs per cycle of its vector width) and a large matmul.

It runs the code of whichever environment imports `pneumo_exp`: a checkout's
`.venv/bin/python bench/throughput.py ...` measures that checkout. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

def setup(args: argparse.Namespace, size: int):
    """The configuration, data, hypermodel, hyperparameters and built model of the given
    point at `size` px."""
    import keras
    import keras_tuner as kt

    from pneumo_exp.config import load_config
    from pneumo_exp.data.dataset import load_training_data
    from pneumo_exp.hypermodels import build_hypermodel

    cfg = load_config(args.arch, {"data.root": args.data, "data.image_size": size,
                                  **sets(args)})
    point = cfg.search.initial_points[0] if cfg.search.initial_points else {}
    cfg = dataclasses.replace(cfg, space={**cfg.space, **point})
    data = load_training_data(cfg.data, cfg.search.seed)
    hypermodel = build_hypermodel(cfg, data.train.labels)
    hp = kt.HyperParameters()
    keras.utils.set_random_seed(cfg.search.seed)  # as the tuner seeds a trial before its build
    model = hypermodel.build(hp)
    return cfg, data, hypermodel, hp, model


def epoch_clock():
    """Two callbacks, the first and the last of a fit: per epoch, the seconds of training
    and of the callbacks at its end (validation figures, ...)."""
    import keras

    times: list[tuple[float, float]] = []

    class First(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.trained = time.perf_counter()

    first = First()

    class Last(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            times.append((first.trained - first.start, now - first.trained))

    return first, Last(), times


def trial(args: argparse.Namespace, size: int) -> dict:
    """A trial's epochs, as the search runs them (search/run.py: make_dataset, the
    callbacks of training_callbacks, the hypermodel's fit)."""

    from pneumo_exp.data.pipeline import make_dataset
    from pneumo_exp.search.callbacks import training_callbacks

    cfg, data, hypermodel, hp, model = setup(args, size)
    first, last, times = epoch_clock()
    callbacks = [first, *training_callbacks(cfg, data.val.images, data.val.labels), last]
    dataset = make_dataset(data.train, cfg.train.batch_size, shuffle=True, seed=cfg.search.seed)
    start = time.perf_counter()
    history = hypermodel.fit(hp, model, dataset, epochs=args.epochs, callbacks=callbacks,
                             shuffle=False, verbose=0)
    wall = time.perf_counter() - start
    n = len(data.train)
    steady = times[1:] or times
    train_s = sum(t for t, _ in steady) / len(steady)
    end_s = sum(c for _, c in steady) / len(steady)
    return {"size": size, "train_images": n, "val_images": len(data.val), "epochs": len(times),
            "first_epoch_s": round(sum(times[0]), 2),
            "epoch_s": round(train_s + end_s, 2), "train_part_s": round(train_s, 2),
            "end_of_epoch_callbacks_s": round(end_s, 2),
            "images_per_s": round(n / (train_s + end_s), 1),
            "images_per_s_train_part": round(n / train_s, 1),
            "fit_wall_s": round(wall, 1),
            "val_auc": [round(v, 4) for v in history.history.get("val_auc", [])]}


CATEGORIES = (  # (category, words of the op's name or type), the first that matches
    ("tf.data", ("Iterator", "Dataset")),
    ("augmentation", ("augmentation",)),
    ("batch normalization", ("batch_normalization", "BatchNorm")),
    ("convolutions", ("Conv2D",)),
    ("pooling", ("max_pooling", "MaxPool", "global_average_pooling")),
    ("activations", ("activation", "Relu")),
    ("input scaling", ("rescaling", "standardize", "equalize")),
    ("dense layers", ("dense", "pneumonia", "dropout")),
    ("optimizer", ("adam", "rmsprop", "sgd", "optimizer")),
    ("loss", ("compile_loss",)),
)


def category(name: str, kind: str) -> str:
    text = f"{name} {kind}"
    for what, words in CATEGORIES:
        if any(w.lower() in text.lower() for w in words):
            return what
    return "metrics and the rest"


def op_times(trace_dir: Path) -> dict[str, float]:
    """Seconds of op time by category, from TensorFlow's profiler trace: its framework op
    statistics (what TensorBoard's profile plugin shows), read with TensorFlow's own
    converter."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    paths = [str(p) for p in trace_dir.rglob("*.xplane.pb")]
    raw, _ = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    table = json.loads(raw)[0]
    cols = [c["id"] for c in table["cols"]]
    times: dict[str, float] = {}
    for row in table["rows"]:
        op = dict(zip(cols, [c["v"] for c in row["c"]], strict=True))
        if op["type"] == "IDLE":
            continue
        what = category(op["operation"], op["type"])
        if what not in ("tf.data", "optimizer", "loss", "metrics and the rest"):
            what += ", backward" if "gradient_tape" in op["operation"] else ", forward"
        times[what] = times.get(what, 0.0) + op["total_self_time"] / 1e6
    return times


def parts(args: argparse.Namespace, size: int) -> dict:
    """The split of a train step (TensorFlow's profiler, over `--profile-steps` steps of the
    hypermodel's fit: op time by what it does) and the validation callback's seconds."""
    import tempfile

    import keras
    import tensorflow as tf

    from pneumo_exp.data.pipeline import make_dataset
    from pneumo_exp.search.callbacks import ValidationFigures

    cfg, data, hypermodel, hp, model = setup(args, size)
    batch = cfg.train.batch_size
    part = data.train.subset(list(range(min(len(data.train), batch * args.profile_steps))))
    dataset = make_dataset(part, batch, shuffle=True, seed=cfg.search.seed)
    keras.utils.set_random_seed(cfg.search.seed)
    hypermodel.fit(hp, model, dataset, epochs=1, verbose=0)  # traced, not profiled
    with tempfile.TemporaryDirectory() as trace:
        tf.profiler.experimental.start(trace)
        start = time.perf_counter()
        hypermodel.fit(hp, model, dataset, epochs=1, verbose=0)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        times = op_times(Path(trace))
    steps = math.ceil(len(part) / batch)
    busy = sum(times.values())
    split = {k: round(v / busy, 3) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}

    callback = ValidationFigures(data.val.images, data.val.labels)
    callback.set_model(model)
    callback.on_epoch_end(0, {})  # traced
    start = time.perf_counter()
    for _ in range(3):
        callback.on_epoch_end(0, {})
    validation = (time.perf_counter() - start) / 3
    return {"size": size, "steps": steps, "step_ms": round(1e3 * wall / steps, 1),
            "op_ms_per_step": round(1e3 * busy / steps, 1), "op_time_split": split,
            "validation_callback_s": round(validation, 2),
            "epoch_steps": math.ceil(len(data.train) / batch)}


def alternatives(args: argparse.Namespace, size: int, rounds: int = 3) -> dict:
    """Milliseconds per train step of the given point, over `--profile-steps` batches: the
    search's own fit, and in turn with it what it replaced and what was tried and not
    taken: Keras' three resamplings of rotation, shift and zoom (without data/resample.py);
    `steps_per_execution` (8 steps per call); the augmentation moved into the tf.data
    pipeline, the network after it compiled by XLA or not (Keras refuses XLA for a model
    with the augmentation inside: its random layers do not support it); and mixed bf16
    (Keras' `mixed_bfloat16` policy). Batch normalization trains through the fused kernel
    in each (hypermodels/fused.py). Thread counts need a process each: `--threads`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pneumo_exp.data.pipeline import make_dataset
    from pneumo_exp.data.resample import one_resampling
    from pneumo_exp.hypermodels.fused import fused_batch_norm

    cfg, data, hypermodel, hp, model = setup(args, size)
    batch = cfg.train.batch_size
    part = data.train.subset(list(range(min(len(data.train), batch * args.profile_steps))))
    dataset = make_dataset(part, batch, shuffle=True, seed=cfg.search.seed)
    compiled = model.get_compile_config()

    def recompiled(net: keras.Model, **changes: Any) -> keras.Model:
        net.compile_from_config({**compiled, **changes})
        return net

    augment = model.get_layer("augmentation")
    before = keras.Model(model.inputs, augment.output)
    augmented = dataset.map(lambda x, y: (before(x, training=True), y)).prefetch(2)
    nets = {"search": (model, dataset),
            "three_resamplings": (hypermodel.build(hp), dataset),
            "steps_per_execution_8": (recompiled(hypermodel.build(hp),
                                                 steps_per_execution=8), dataset)}
    for name, jit in (("augmentation_in_tf_data", False), ("xla_after_augmentation", True)):
        net = hypermodel.build(hp)
        after = net.get_layer("augmentation")
        nets[name] = (recompiled(keras.Model(after.output, net.output), jit_compile=jit),
                      augmented)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        nets["mixed_bfloat16"] = (hypermodel.build(hp), dataset)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    steps = math.ceil(len(part) / batch)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for r in range(rounds + 1):  # the first round traces and compiles
        for name, (net, data_) in nets.items():
            resampled = (contextlib.nullcontext() if name == "three_resamplings"
                         else one_resampling(net))
            with fused_batch_norm(net), resampled:
                start = time.perf_counter()
                net.fit(data_, epochs=1, verbose=0)
            if r:
                times[name].append(1e3 * (time.perf_counter() - start) / steps)
    out = {"size": size, "steps": steps, "threads": (tf.config.threading
                                                     .get_intra_op_parallelism_threads(),
                                                     tf.config.threading
                                                     .get_inter_op_parallelism_threads())}
    out.update({f"{name}_ms": round(float(np.median(t)), 1) for name, t in times.items()})
    return out


def counted_flops(model) -> dict:
    """Forward FLOPs per image of the Conv2D and Dense layers (2 per multiply-add), and the
    training step's: backward = 2x forward (gradients of inputs and of weights), but the
    first convolution's input gradient is not computed."""
    import keras

    forward, first = 0.0, None
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            f = 2.0 * h * w * kh * kw * layer.input.shape[-1] * c_out
            first = f if first is None else first
            forward += f
        elif isinstance(layer, keras.layers.Dense):
            forward += 2.0 * layer.input.shape[-1] * layer.units
    return {"forward_mflop": round(forward / 1e6, 2),
            "train_mflop": round((3 * forward - (first or 0.0)) / 1e6, 2)}


def profiled_forward_flops(model, size: int) -> float | None:
    """TensorFlow's profiler's count of the float operations of the forward graph, per
    image (None where the profiler cannot count it)."""
    import tensorflow as tf

    channels = model.inputs[0].shape[-1]
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, size, size, channels], tf.uint8)).graph
    try:
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=graph, options=opts)
    except Exception:  # an estimate beside the count; the count stands without it
        return None
    return round(info.total_float_ops / 1e6, 2)


def cpu() -> dict:
    """The CPU's model, vector width, and fp32 peak: cores x clock x FLOPs per cycle (two
    FMA pipes of 16 fp32 lanes with AVX-512, of 8 with AVX2, 2 FLOPs per FMA)."""
    text = Path("/proc/cpuinfo").read_text()
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines
                      if ln.startswith("flags")), []))
    mhz = max(float(ln.split(":")[1]) for ln in lines if ln.startswith("cpu MHz"))
    cores = len(os.sched_getaffinity(0))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * 2 * lanes
    isa = ", ".join(x for x, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"),
                                   ("AVX512_BF16", "avx512_bf16"), ("AMX", "amx_tile"))
                    if f in flags)
    return {"cpu": model, "isa": isa, "cores": cores, "ghz": round(mhz / 1000, 2),
            "fp32_flops_per_cycle": per_cycle,
            "peak_gflops": round(cores * mhz / 1000 * per_cycle, 1)}


def matmul_gflops(n: int = 2048, rounds: int = 5) -> float:
    """A large fp32 matmul's GFLOP/s: what TensorFlow reaches on this CPU at best."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    mm = tf.function(lambda x: tf.linalg.matmul(x, x))
    mm(a).numpy()
    start = time.perf_counter()
    for _ in range(rounds):
        mm(a).numpy()
    return round(2 * n**3 * rounds / (time.perf_counter() - start) / 1e9, 1)


def flops(args: argparse.Namespace, size: int) -> dict:
    *_, model = setup(args, size)
    counted = counted_flops(model)
    return {"size": size, **counted, "profiler_forward_mflop": profiled_forward_flops(model, size)}


def sets(args: argparse.Namespace) -> dict:
    """--set KEY=VALUE items as dotted configuration keys, read as the search's --set."""
    from pneumo_exp.config import parse_override

    return dict(map(parse_override, args.set))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset folder (default: the search's)")
    p.add_argument("--arch", default="aug_cnn")
    p.add_argument("--size", type=int, nargs="+", default=[64, 96],
                   help="resolutions: the screen's and the full trial's")
    p.add_argument("--epochs", type=int, default=3, help="epochs of `trial` (the first apart)")
    p.add_argument("--only", nargs="+",
                   choices=["trial", "parts", "flops", "alternatives"],
                   default=["flops", "parts", "trial"])
    p.add_argument("--threads", type=int, nargs=2, metavar=("INTRA", "INTER"),
                   help="TensorFlow's intra- and inter-op threads (default: train.threads "
                        "for both)")
    p.add_argument("--profile-steps", type=int, default=40,
                   help="train steps profiled by `parts`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting over experiments/<arch>.yaml, as the search's --set")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    from pneumo_exp.config import load_config
    from pneumo_exp.search.run import pin_threads

    threads = load_config(args.arch, {"data.root": args.data, **sets(args)}).train.threads
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(args.threads[1])
        threads = args.threads
    else:
        pin_threads(threads)

    result: dict = {"date": time.strftime("%Y-%m-%d"), "machine": cpu(), "threads": threads,
                    "tensorflow": tf.__version__, "load_1min": os.getloadavg()[0]}
    if "flops" in args.only:
        result["matmul_2048_gflops"] = matmul_gflops()
    for size in args.size:
        for what in args.only:
            result[f"{what}_{size}"] = globals()[what](args, size)
    peak = result["machine"]["peak_gflops"]
    for size in args.size:
        f, t = result.get(f"flops_{size}"), result.get(f"trial_{size}")
        if f and t:
            achieved = f["train_mflop"] * t["images_per_s_train_part"] / 1e3
            result[f"achieved_{size}"] = {"gflops_train_part": round(achieved, 1),
                                          "fraction_of_peak": round(achieved / peak, 3)}
    result["load_1min_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
