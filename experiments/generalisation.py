"""Generalisation (paper v2 Fig. 8, ImageNet-10% -> full) at MNIST scale: the fine-tuning trajectory (on digits
5-9) of a body pre-trained on 10 % of the digits 0-4 images is transferred with FGMT onto a body pre-trained on
all of them ("10% -> full") and onto another pre-trained on 10 % ("10% -> 10%"); each transferred start and each
plain pre-trained start ("standard") is then trained with Adam (lr 1e-4, 10 epochs) and scored on the 5-9 test
set every epoch. The paper's question: does a trajectory learnt from a weaker pre-training carry over to a
stronger one, and beat training that stronger one directly? Writes pretrained_w<width>_generalisation.parquet
and .png.

    python experiments/generalisation.py --smoke --out /tmp/smoke
    python experiments/generalisation.py --data-root ../shared/datasets --width 1024 --cache runs/cache \
        --out experiments/results
"""
import sys

from ltray.analysis.plots import generalisation_figure
from ltray.analysis.scenarios import generalisation
from ltray.analysis.script import main
from ltray.config import FinetuneConfig
from ltray.results import GENERALISATION_SCHEMA

SHARE = 0.1   # the source body's share of the pre-training images


def body(exp):
    cfg = FinetuneConfig(epochs=2 if exp.args.smoke else 10, lr=1e-4)
    rows = []
    for s1, s2 in exp.seeds:
        rows += generalisation(exp.scenario, exp.data, SHARE, s1, s2, cfg, exp.run_id(cfg, SHARE), cache=exp.cache,
                               device=exp.args.device, progress=exp.args.progress)
        exp.log(f"pair ({s1}, {s2}), test accuracy at the last epoch: " + ", ".join(
            f"{r['start']} ({r['source_pretrain'] or '-'} -> {r['target_pretrain']:g}) {r['test_acc']:.2f}"
            for r in rows[-4 * (cfg.epochs + 1):] if r["epoch"] == cfg.epochs))
    exp.publish("generalisation", rows, GENERALISATION_SCHEMA, generalisation_figure(rows))


if __name__ == "__main__":
    sys.exit(main(body, __doc__, "generalisation", scenario="pretrained"))
