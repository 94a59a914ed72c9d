"""Benchmark: the study's input pipeline against pneumo-exp's, on the study's aug_cnn.

    make bench DATA=../shared/data/chest_xray          # or: python bench/pipeline.py --data ...

In one process, alternating for --rounds rounds, one epoch of the full train split at 64x64
grayscale through
  (a) the study's pipeline: Keras 2 (tf-keras) ImageDataGenerator.flow_from_directory with
      its augmentation (rescale, rotation 15, shifts 0.2, brightness 1.0-1.5, zoom 0.2,
      horizontal flip), decoding and augmenting the JPEGs every epoch, into a tf-keras model;
  (b) pneumo-exp's: decoded uint8 arrays from the cache, tf.data batches, scaling and
      augmentation as Keras 3 layers inside the AugCNN model (its default point).
Both models are the study's network (Conv 32 3x3, Conv 32 4x4, Conv 64 3x3 + pooling,
Dense 64, sigmoid; RMSprop 1e-4), batch 32. Also: cold vs warm data load of the train split,
and the peak memory of a 1-trial search at 128x128 (a subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STUDY_AUGMENTATION = dict(rescale=1.0 / 255, rotation_range=15, width_shift_range=0.2,
                          height_shift_range=0.2, brightness_range=(1.0, 1.5), zoom_range=0.2,
                          horizontal_flip=True)


def training_flops_per_image(model) -> float:
    """3x the forward multiply-adds x 2 of the Conv2D and Dense layers (fwd + 2 bwd passes)."""
    import keras
    flops = 0.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2.0 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2.0 * layer.input.shape[-1] * layer.units
    return 3 * flops


def peak_gflops() -> tuple[float, str]:
    """cores x clock x 32 fp32 FLOPs/cycle (two 256-bit FMA pipes: AVX2, or AVX-512 on Zen 4)."""
    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))
    cores = os.cpu_count() or 1
    return cores * mhz / 1000 * 32, f"{cores} cores x {mhz / 1000:.2f} GHz x 32 FLOPs/cycle"


def epoch_times(fit) -> list[float]:
    """Seconds of each epoch of `fit(callbacks=...)`, from a Keras callback."""
    times: list[float] = []

    class Timer:
        def set_model(self, model):  # tf-keras and Keras 3 both call these
            pass

        def set_params(self, params):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    fit([Timer()])
    return times


def steady(times: list[float]) -> float:
    """The median epoch after the first (which also traces the training function)."""
    rest = sorted(times[1:]) or times
    return rest[len(rest) // 2]


def upscaled_copy(data: Path, side: int, target: Path) -> Path:
    """The train split re-encoded as side x side JPEGs: the size class of the original
    Kermany files (1000-2900 px), which the shared copy has been shrunk from."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image
    files = sorted((data / "train").glob("*/*.jpeg"))
    done = target / ".complete"
    if done.exists():
        return target

    def one(f: Path) -> None:
        out = target / "train" / f.parent.name / f.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.convert("L").resize((side, side), Image.Resampling.BICUBIC).save(out, quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, files))
    done.touch()
    return target


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """What this CPU sustains in fp32 on TensorFlow's best case, a large matrix product."""
    import tensorflow as tf
    a = tf.random.uniform((n, n))
    tf.linalg.matmul(a, a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        b = tf.linalg.matmul(a, a)
    b.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def study_epoch(data: Path, size: int, batch: int, epochs: int) -> tuple[list[float], int]:
    import tf_keras
    from tf_keras import layers
    gen = tf_keras.preprocessing.image.ImageDataGenerator(**STUDY_AUGMENTATION)
    flow = gen.flow_from_directory(str(data / "train"), target_size=(size, size),
                                   color_mode="grayscale", class_mode="binary",
                                   batch_size=batch, seed=0)
    model = tf_keras.Sequential([
        layers.Input((size, size, 1)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(32, 4, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(64, activation="relu"),
        layers.Dense(1, activation="sigmoid")])
    model.compile(tf_keras.optimizers.RMSprop(1e-4), "binary_crossentropy", ["accuracy"])
    times = epoch_times(lambda cb: model.fit(flow, epochs=epochs, verbose=0, callbacks=cb))
    return times, flow.samples


def project_epoch(data: Path, size: int, batch: int, cache: Path,
                  epochs: int) -> tuple[list[float], int, float]:
    import keras
    import keras_tuner as kt

    from pneumo_exp.data.pipeline import make_dataset
    from pneumo_exp.data.sources import load_split, open_source
    from pneumo_exp.hypermodels.cnn import AugCNN
    train = load_split(open_source(data), "train", size, 1, cache).data
    model = AugCNN((size, size, 1), seed=0).build(kt.HyperParameters())
    ds = make_dataset(train, batch, shuffle=True, seed=0)
    times = epoch_times(lambda cb: model.fit(ds, epochs=epochs, verbose=0, callbacks=cb,
                                             shuffle=False))
    flops = training_flops_per_image(model)
    keras.backend.clear_session()
    return times, len(train), flops


def data_load(data: Path, size: int, cache: Path) -> tuple[float, float]:
    from pneumo_exp.data.sources import load_split, open_source
    shutil.rmtree(cache, ignore_errors=True)
    cold = load_split(open_source(data), "train", size, 1, cache)
    warm = load_split(open_source(data), "train", size, 1, cache)
    assert not cold.from_cache and warm.from_cache
    return cold.seconds, warm.seconds


def search_peak_memory(data: Path, size: int) -> float:
    """Max RSS (MB) of a 1-trial, 1-epoch aug_cnn search at size x size, from a cold cache."""
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "pneumo_exp.cli", "search", "aug_cnn", "--data", str(data),
               "--image-size", str(size), "--max-trials", "1", "--epochs", "1"]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="per pipeline and round")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory-size", type=int, default=128)
    parser.add_argument("--upscaled", type=int, default=0, metavar="SIDE",
                        help="also time both on a copy of train re-encoded at SIDE x SIDE "
                        "(e.g. 1500, the size of the original files)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from pneumo_exp.cli.tf_import import import_tensorflow
    import_tensorflow()
    cache = Path(tempfile.mkdtemp(prefix="pneumo-bench-cache-"))
    cold, warm = data_load(args.data, args.image_size, cache)
    study, ours, flops = [], [], 0.0
    for _ in range(args.rounds):
        times, n_study = study_epoch(args.data, args.image_size, args.batch_size, args.epochs)
        study.append(steady(times))
        times, n_ours, flops = project_epoch(args.data, args.image_size, args.batch_size,
                                             cache, args.epochs)
        ours.append(steady(times))
    shutil.rmtree(cache, ignore_errors=True)
    upscaled = {}
    if args.upscaled:
        copy = upscaled_copy(args.data, args.upscaled, Path(tempfile.gettempdir())
                             / f"pneumo-bench-upscaled-{args.upscaled}")
        cold_big, _ = data_load(copy, args.image_size, cache)
        times, _ = study_epoch(copy, args.image_size, args.batch_size, 2)
        upscaled = {"side": args.upscaled, "study_epoch_s": steady(times),
                    "project_cold_load_s": cold_big}
        shutil.rmtree(cache, ignore_errors=True)
    memory = search_peak_memory(args.data, args.memory_size)
    peak, peak_how = peak_gflops()
    attainable = matmul_gflops()
    s, o = min(study), min(ours)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "study_epoch_s": study, "project_epoch_s": ours,
        "study_images_per_s": n_study / s, "project_images_per_s": n_ours / o,
        "speedup": s / o,
        "training_gflop_per_image": flops / 1e9,
        "study_gflops": flops * n_study / s / 1e9, "project_gflops": flops * n_ours / o / 1e9,
        "peak_gflops": peak, "peak_how": peak_how, "matmul_gflops": attainable,
        "cold_load_s": cold, "warm_load_s": warm, "warm_speedup": cold / warm,
        f"search_peak_rss_mb_{args.memory_size}px": memory, "upscaled": upscaled,
    }
    print(f"""
| figure | study pipeline (a) | pneumo-exp (b) |
|---|---|---|
| seconds per epoch (median epoch after the first; best of {args.rounds} rounds: \
{', '.join(f'{x:.2f}' for x in study)} / {', '.join(f'{x:.2f}' for x in ours)}) | {s:.2f} | \
{o:.2f} |
| images per second | {n_study / s:.0f} | {n_ours / o:.0f} |
| speed-up | 1.0x | **{s / o:.1f}x** |
| achieved GFLOPS, nominal ({flops / 1e6:.0f} MFLOP per training image) | \
{results['study_gflops']:.0f} | {results['project_gflops']:.0f} |
| ... of the fp32 peak ({peak:.0f} GFLOPS: {peak_how}) | \
{results['study_gflops'] / peak:.0%} | {results['project_gflops'] / peak:.0%} |
| ... of a 2048x2048 matmul on this CPU ({attainable:.0f} GFLOPS) | \
{results['study_gflops'] / attainable:.0%} | {results['project_gflops'] / attainable:.0%} |

| data load, full train split, {args.image_size}x{args.image_size} grayscale | seconds |
|---|---|
| cold (decode {n_ours} JPEGs, write the cache) | {cold:.2f} |
| warm (read the cache) | {warm:.3f} ({cold / warm:.0f}x faster) |

Peak memory (max RSS) of a 1-trial aug_cnn search at {args.memory_size}x{args.memory_size}, \
cold cache: {memory:.0f} MB""")
    if upscaled:
        u = upscaled
        print(f"""
On the train split re-encoded at {u['side']}x{u['side']} (the original files' size class):
the study's pipeline takes {u['study_epoch_s']:.1f} s per epoch (it decodes every JPEG every
epoch), pneumo-exp {o:.2f} s after decoding once in {u['project_cold_load_s']:.1f} s: \
**{u['study_epoch_s'] / o:.1f}x** per epoch.""")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
