"""The command line: `skynet` / `python main.py`, the config wizard, `--failed`, the config reference."""
