"""`python -m pipeline`: the `imagenet-shards` command line."""
import sys

from pipeline.cli import main

sys.exit(main())
