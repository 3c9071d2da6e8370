"""Ensembles by transfer, as data and pure functions: the members (`members`: a training run, a source's
checkpoints, a transfer and its fine-tuning, as units of work), the recipe and its plan and assembly
(`recipe`), and reading results across runs (`report`). `python -m ltray.ensemble` runs the command, whose
Ray fan-out is ltray.distributed.ensemble."""
