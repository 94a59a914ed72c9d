"""TensorFlow's thread count decides how it splits its sums, so it decides the last digits of
every weight: pinned, a search gives the same trials on 1 core or 2, however busy the
machine; left to TensorFlow (one thread per schedulable core), it does not."""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def pin_threads(threads: int | None) -> None:
    """Intra- and inter-op threads of this process; None leaves TensorFlow's default. Call
    before the first TensorFlow operation."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already ran an op in this process (e.g. tests)
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("TensorFlow is already running with its own thread count; "
                        "train.threads=%d does not apply in this process.", threads)
