"""Ensembles by transfer: the members (`members`: a training run, a source's checkpoints, a transfer and its
fine-tuning, as units of work), the recipe and its plan and assembly (`recipe`), where a run's units run (`units`:
here, then as Ray tasks through ltray.distributed), and reading results across runs (`report`).
`python -m ltray.ensemble` runs the command, ltray.cli.ensemble."""
