"""Keras Tuner searches: the run of one search, its tuners and oracles, the callbacks of
every training run, distributed searches, k-fold cross-validation, and the console.

Importing this package loads nothing heavy; its modules import TensorFlow as they need.
"""
