"""The sync engine: daemon, handler (workers, retries), reconciler, start-up scan, path mapper."""
