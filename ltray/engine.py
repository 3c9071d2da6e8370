"""`python -m ltray.engine check-cluster FILE`, as before the package took its layout: the same command as
`ltray check-cluster FILE`. The Ray engine itself is ltray.distributed.engine."""
import sys

if __name__ == "__main__":
    from ltray.cli import main

    sys.exit(main(sys.argv[2:] if sys.argv[1:2] == ["check-cluster"] else sys.argv[1:],
                  prog="python -m ltray.engine check-cluster", command="check-cluster"))
