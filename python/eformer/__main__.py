"""The eformer command line from Python: `python -m eformer train ...`, and the `eformer` command that
`pip install` puts on the PATH. Same program as the `eformer` executable (cli::run in C++)."""
import sys

from . import _C


def main():
    sys.stdout.flush()
    sys.stderr.flush()
    return _C._cli(["eformer"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
