"""Ablations of the source trajectory (paper Sec. 3.3, Fig. 3): the linear trajectory [theta1^0 : theta1^T]
with the cosine vs the uniform lambda schedule, and the linear trajectory vs the actual per-epoch checkpoints.
Every method is transferred for each variant, from the same trained source and target.
Writes <scenario>_w<width>_ablation.parquet and .png.

    python experiments/ablations.py --smoke --out /tmp/smoke
    nice python experiments/ablations.py --data-root /work/shared/datasets --cache /tmp/ltray-cache \
        --out experiments/results
"""
import sys

from ltray.analysis.plots import ablation_figure
from ltray.analysis.script import main
from ltray.results import TRANSFER_SCHEMA
from ltray.runs import transfer_rows

VARIANTS = (("linear", "cosine"), ("linear", "uniform"), ("actual", "cosine"))


def body(exp):
    rows = []
    for _, _, source, target in exp.trajectories():
        for trajectory, schedule in VARIANTS:
            scenario = exp.scenario.with_transfer(trajectory=trajectory, schedule=schedule)
            run = exp.transfer(source, target, scenario=scenario)
            rows += transfer_rows(run, scenario.columns(), scenario.transfer, exp.run_id(VARIANTS))
    exp.publish("ablation", rows, TRANSFER_SCHEMA, ablation_figure(rows))


if __name__ == "__main__":
    sys.exit(main(body, __doc__, "ablation"))
