"""Rejects on their way to a stage's "rejects" output, each counted in a Beam counter.

One counter per stage and reason: namespace "annotation_rejects" for annotation files,
"rejects" for samples; the name is the reason.
"""
from __future__ import annotations

from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.records import Reject

__all__ = ["count_reject", "reject_output"]


def count_reject(reject: Reject) -> Reject:
    Metrics.counter("annotation_rejects" if reject.is_annotation else "rejects", reject.reason).inc()
    return reject


def reject_output(reject: Reject) -> pvalue.TaggedOutput:
    """The reject, counted, as an element of the "rejects" output."""
    return pvalue.TaggedOutput("rejects", count_reject(reject))
