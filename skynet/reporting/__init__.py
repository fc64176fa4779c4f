"""Reporting: logs, systemd notify, status files, the PostgreSQL notifier for the dashboard."""
