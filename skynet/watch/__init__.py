"""Watching folders: our inotify layer, recursive tree watches, ignore patterns."""
