"""Validation accuracy of the transferred theta2^t at every step t, per method (paper Sec. 4.1, Fig. 4), for
random initialisations (--scenario random) or pre-trained ones fine-tuned on another task (--scenario
pretrained). Writes <scenario>_w<width>_transfer.parquet and .png.

    python experiments/transfer_curves.py --smoke --out /tmp/smoke
    nice python experiments/transfer_curves.py --scenario pretrained --data-root /work/shared/datasets \
        --cache /tmp/ltray-cache --out experiments/results
"""
import sys

from ltray.analysis.plots import transfer_figure
from ltray.analysis.script import main
from ltray.results import TRANSFER_SCHEMA
from ltray.runs import transfer_rows


def body(exp):
    rows = []
    for run in exp.runs():
        rows += transfer_rows(run, exp.scenario.columns(), exp.scenario.transfer, exp.run_id())
    exp.publish("transfer", rows, TRANSFER_SCHEMA,
                transfer_figure(rows, chance=100.0 / exp.data.task.num_classes))


if __name__ == "__main__":
    sys.exit(main(body, __doc__, "transfer"))
