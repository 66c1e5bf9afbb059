"""Reading a finished build: one split through its manifest and its Parquet index.

`open_dataset(root, split)` gives a `Dataset`: its counts and classes from the manifest, its
shards, its index as a pyarrow Table, one sample by key (`get`), and filtered views (`query`)
whose samples are read by their offsets. torch is optional: nothing here imports it.
"""
from pipeline.reading.dataset import Dataset, Query, Sample, ShardEntry, open_dataset
from pipeline.reading.stream import Stream, StreamShard

__all__ = ["open_dataset", "Dataset", "Query", "Sample", "ShardEntry", "Stream", "StreamShard"]
