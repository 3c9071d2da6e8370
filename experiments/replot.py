"""Redraw every analysis figure in a folder from its Parquet files (no training, no transfers).

    python experiments/replot.py experiments/results
"""
import sys

from ltray.analysis.summaries import replot

if __name__ == "__main__":
    for path in replot(sys.argv[1] if len(sys.argv) > 1 else "experiments/results"):
        print(f"wrote {path}")
