"""pneumo-exp: experiment-tracked hyperparameter search for pneumonia detection on chest X-rays."""

import os

# Quiet TensorFlow's C++ start-up banner unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def use_project_store() -> str:
    """Point MLflow at the store the make targets use ($MLFLOW_TRACKING_URI, else
    mlruns/mlflow.db under the working directory), so `models:/...` URIs resolve in a
    notebook or script as they do for `pneumo-exp predict`. Returns its URI."""
    from pneumo_exp.tracking.store import connect

    return connect().tracking_uri
