"""imagenet-shards: the options, the build graph and the command line (see README.md)."""
import logging

__version__ = "0.1.0"


def _not_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam warns at import that the optional BigQuery client is missing; the tool never uses it."""
    return not record.getMessage().startswith("apitools not found")


# On the root logger, where Beam logs that warning while it is imported (before the command line
# sets up its own logging).
logging.getLogger().addFilter(_not_beam_import_noise)
