"""Reading chest X-ray datasets: decode, cache, split, and feed to Keras."""
