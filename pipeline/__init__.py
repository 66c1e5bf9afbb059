"""imagenet-shards: options, graph assembly and the command line (see README.md)."""

__version__ = "0.1.0"
