"""Mode connectivity (paper Sec. 4.3, Fig. 6): loss along the linear paths Source* (pi_T theta1^T) <->
transferred theta2^T and Trained theta2^T <-> transferred theta2^T for each method, with loss barriers; and the
loss surface on the plane through Trained, Oracle and FGMT theta2^T (Garipov et al. 2018).
Writes <scenario>_w<width>_paths.parquet/.png and <scenario>_w<width>_plane.parquet/.png.

    python experiments/mode_connectivity.py --smoke --out /tmp/smoke
    nice python experiments/mode_connectivity.py --data-root /work/shared/datasets --cache /tmp/ltray-cache \
        --out experiments/results
"""
import sys

from ltray.analysis.plots import paths_figure, planes_figure
from ltray.analysis.scenarios import mode_connectivity
from ltray.analysis.script import main
from ltray.results import PATH_SCHEMA, PLANE_SCHEMA, provenance


def body(exp):
    grids = (7, 7) if exp.args.smoke else (25, 21)
    stamp = provenance(exp.run_id(grids), exp.args.device)
    paths, planes = [], []
    for run in exp.runs():
        p, q = mode_connectivity(exp.scenario, exp.data, run, *grids, device=exp.args.device)
        paths += [dict(r, **stamp) for r in p]
        planes += [dict(r, **stamp) for r in q]
        exp.log("barriers " + ", ".join(f"{r['method']}/{r['case']} {r['barrier']:.3f}" for r in p if r["alpha"] == 0))
    exp.publish("paths", paths, PATH_SCHEMA, paths_figure(paths))
    exp.publish("plane", planes, PLANE_SCHEMA, planes_figure(planes))


if __name__ == "__main__":
    sys.exit(main(body, __doc__, "connectivity"))
