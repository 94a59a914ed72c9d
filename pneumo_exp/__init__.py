"""pneumo-exp: experiment-tracked hyperparameter search for pneumonia detection on chest X-rays."""

import os

# Quiet TensorFlow's C++ start-up banner, and MLflow's download progress bars, unless the
# user asked for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"


def use_project_store() -> str:
    """Point MLflow at the store the make targets use ($MLFLOW_TRACKING_URI, else
    mlruns/mlflow.db under the working directory), so `models:/...` URIs resolve in a
    notebook or script as they do for `pneumo-exp predict`. Returns its URI."""
    from pneumo_exp.tracking.store import connect

    return connect().tracking_uri
