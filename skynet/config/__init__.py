"""Configuration: the INI file's keys, their parsing and checks (one value parser for all)."""
