"""A registered version adapted to a new site's unlabeled images: the batch-normalization
statistics re-estimated (AdaBN), registered as a new version with the alias site-<name>."""
