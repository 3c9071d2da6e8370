"""Subsequent training (paper Sec. 4.2, Fig. 5): Adam (lr 1e-4, 10 epochs) from each method's best transferred
theta2^t and from the plain initialisation theta2^0 ("standard"); validation accuracy per epoch.
Writes <scenario>_w<width>_subsequent.parquet and .png.

    python experiments/subsequent_training.py --smoke --out /tmp/smoke
    nice python experiments/subsequent_training.py --scenario pretrained --data-root /work/shared/datasets \
        --cache /tmp/ltray-cache --out experiments/results
"""
import sys

from ltray.analysis.plots import subsequent_figure
from ltray.analysis.scenarios import subsequent_training
from ltray.analysis.script import main
from ltray.config import FinetuneConfig
from ltray.results import SUBSEQUENT_SCHEMA


def body(exp):
    cfg = FinetuneConfig(epochs=2 if exp.args.smoke else 10, lr=1e-4)
    rows = []
    for run in exp.runs():
        rows += subsequent_training(exp.scenario, exp.data, run, cfg, exp.run_id(cfg), exp.args.device,
                                    exp.args.progress)
        exp.log("epoch 1: " + ", ".join(f"{r['start']} {r['val_acc']:.2f}" for r in rows[-5 * (cfg.epochs + 1):]
                                       if r["epoch"] == 1))
    exp.publish("subsequent", rows, SUBSEQUENT_SCHEMA, subsequent_figure(rows))


if __name__ == "__main__":
    sys.exit(main(body, __doc__, "subsequent"))
