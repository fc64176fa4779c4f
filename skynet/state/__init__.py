"""State on disk: the state folder, its SQLite databases (queue, Index, failed, resume), atomic files."""
