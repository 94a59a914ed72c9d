"""MLflow: the store, the names of everything written to it, the runs of a search and what
each trial, promotion, evaluation and adaptation records, and listings of the store.

Importing this package loads no TensorFlow; only `trials` (what a trained Keras model
logs) does.
"""
