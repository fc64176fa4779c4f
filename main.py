#!/usr/bin/env python3
"""skynet: keep local folders mirrored to S3, SFTP or another folder.

    python main.py --config local      # interactive setup
    python main.py --run-with local    # run the daemon
    python main.py --help              # everything else
"""
from skynet.cli.main import main

if __name__ == "__main__":
    main()
