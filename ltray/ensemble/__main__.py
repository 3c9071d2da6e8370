"""`python -m ltray.ensemble`: the main job, the same command as `ltray ensemble` (ltray.distributed.ensemble)."""
import sys

from ltray.cli import main

sys.exit(main(prog="python -m ltray.ensemble", command="ensemble"))
