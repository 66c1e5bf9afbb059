"""The `imagenet-shards` console script: local Beam workers first, then the command line.

Starting the workers is the one thing that must happen before Beam is imported (an import
takes ~1 s, and the workers need that long themselves): see pipeline/workers.py. Everything
else is pipeline/cli.py.
"""
from __future__ import annotations

import sys
from typing import Optional

from pipeline.workers import WarmWorkers, warm_worker_count


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    count = warm_worker_count(argv)
    workers = WarmWorkers(count) if count else None
    try:
        from pipeline.cli import main as cli_main

        return cli_main(argv, workers=workers)
    finally:
        if workers:
            workers.close()


if __name__ == "__main__":
    sys.exit(main())
