"""pneumo-exp: experiment-tracked hyperparameter search for pneumonia detection on chest X-rays."""

import os

# Quiet TensorFlow's C++ start-up banner unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
