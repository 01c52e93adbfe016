"""`python -m dedicated.localcluster ACTION ...`: the `dedicated cluster` commands on their own.

Same commands and arguments as `dedicated cluster ACTION`; this entry point only skips importing
the other areas' command modules (some import torch), so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dedicated.localcluster.cli import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dedicated.localcluster")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cluster", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
