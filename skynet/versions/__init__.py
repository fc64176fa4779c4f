"""Versions: what a mirror overwrites or deletes is kept, pruned by a retention
policy, and any path can be rebuilt as of any time (see model.py)."""
