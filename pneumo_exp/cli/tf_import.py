"""Import TensorFlow once, before Keras, with a clear message when it is missing and without
its C++ start-up banner (printed before TF_CPP_MIN_LOG_LEVEL takes effect)."""

from __future__ import annotations

import os
import sys
import tempfile

from pneumo_exp.errors import UserError

_BANNER = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
           "cpu_feature_guard", "rebuild TensorFlow with the appropriate compiler flags")


def import_tensorflow() -> None:
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401  (imports tensorflow, its backend)
            import tensorflow  # noqa: F401
        except ImportError as e:
            raise UserError(f"TensorFlow could not be imported ({e}). Install it with `make "
                            "install`, or pip install -e '.[cpu]' ('.[gpu]' for CUDA).") from e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(b in line for b in _BANNER):
                    print(line, file=sys.stderr)
