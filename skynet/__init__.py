"""skynet: keep local folders mirrored to S3, SFTP or another folder, in real time."""

#: The one place the version is written: pyproject.toml reads it from here
#: ([tool.setuptools.dynamic]), `skynet --version` and the notifier report it, so an
#: installed wheel and a plain checkout say the same.
__version__ = "0.1.0"
