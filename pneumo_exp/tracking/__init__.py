"""MLflow: everything written to it or read from it (docs/architecture.md). Importing this
package loads no TensorFlow; only `trials` (what a trained Keras model logs) does."""
