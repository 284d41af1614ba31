"""Unified training entry point: ``python run_trainer.py`` = ``continuonbrain train``.

Kept at the repo root for the robot's service files; it only forwards to the CLI.
"""

import sys

from continuonbrain.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
