"""`python -m ltray.ensemble`: the main job, the same command as `ltray ensemble` (ltray.cli.ensemble)."""
from ltray.cli import entry

entry(prog="python -m ltray.ensemble", command="ensemble")
