"""SFTP servers (asyncssh)."""
