"""The training engine: the sphere hierarchy (hierarchy.py), sphere threads, tree reduction,
the trainer and its statistics."""
