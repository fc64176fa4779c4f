"""PYTHONPATH=bench/preludes/no_pysqlite3: the process cannot import pysqlite3, as on a
platform without its wheel, so skynet/state/sqlitelib.py falls back to the standard library's
sqlite3 (bench/sqlite_bench.py measures what that costs)."""
import sys

sys.modules["pysqlite3"] = None
