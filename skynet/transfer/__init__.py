"""Moving bytes: the one chunk scheduler (chunks.py) that every large transfer goes through, in either direction; fetching a remote file (fetch.py); the bandwidth limit (throttle.py)."""
