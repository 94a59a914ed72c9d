"""What decides a search's figures besides its configuration and seed: the CPU and its
instruction sets, TensorFlow's oneDNN settings and thread count, and the library versions
(docs/searching.md, "Trials decide, the clock only caps"). The record goes on every
search's parent run (tags machine.*), so two searches can be told apart.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from importlib import metadata
from pathlib import Path

MACHINE_PREFIX = "machine."
# The instruction sets oneDNN dispatches on for float32 and bfloat16 convolutions.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "keras-tuner", "numpy")
ONEDNN_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


@functools.cache
def _cpuinfo() -> tuple[str, str]:
    """(model name, its ISA_FLAGS) of the first processor in /proc/cpuinfo; elsewhere the
    platform's processor string and no flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), "unknown"
    model, flags = (re.search(rf"^{key}\s*:(.*)$", text, re.MULTILINE)
                    for key in ("model name", "flags"))
    found = flags[1].split() if flags else ()
    return ((model[1].strip() if model else "") or platform.machine(),
            " ".join(f for f in ISA_FLAGS if f in found) or "unknown")


def cpu_kind() -> str:
    """The CPU model and the instruction sets that change TensorFlow's kernels, e.g.
    'Intel(R) Xeon(R) Processor; avx2 fma avx512f ... amx_tile'."""
    return "; ".join(_cpuinfo())


def machine_record(threads: int | None) -> dict[str, str]:
    """Tags machine.*: CPU and instruction sets, cores this process may use, TensorFlow's
    threads and oneDNN settings, and the versions of Python and the libraries."""
    model, isa = _cpuinfo()
    record = {"cpu": model, "isa": isa,
              "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count()),
              "threads": str(threads) if threads else "one per core (train.threads: null)",
              "onednn": ", ".join(f"{k}={os.environ[k]}" for k in ONEDNN_ENV
                                  if k in os.environ) or "TensorFlow's defaults",
              "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            record[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {f"{MACHINE_PREFIX}{k}": v for k, v in record.items()}
