"""Print markdown tables (mean ± std over seed pairs, with n) of the analyses' Parquet files in a folder,
as quoted in docs/analyses.md.

    python experiments/summarise.py experiments/results
"""
import sys

from ltray.analysis.summaries import summary_markdown

if __name__ == "__main__":
    print(summary_markdown(sys.argv[1] if len(sys.argv) > 1 else "experiments/results"))
