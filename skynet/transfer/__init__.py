"""Moving bytes: the one chunk scheduler (chunks.py) that every large transfer, in either direction, goes through."""
