"""Fleet logs: schema, sources, webdataset shards, loaders.

Public surface (submodules import their heavy dependencies themselves):
- ``data.schema``: ``Segment``, ``Cause``, ``validate`` (re-exported here).
- ``data.shards``: ``write_shards``, ``iter_samples``, ``expand_urls``, ``read_manifest``.
- ``data.loaders``: ``split_of`` (THE held-out split), ``frame_dataset``, ``window_dataset``.
- ``data.datamodule``: ``FleetDataModule``.
- ``data.labels``: ``disengagement_targets``; ``data.poses``: SE(3) pose composition.
- ``data.camera``: ``Camera`` (the logs' meta.camera) and ``reproject`` (ground-plane re-projection for a moved car).
- ``data.sources``: procedural (fleet generate), comma2k19, csv_video, gym recorder.
"""

from drivegpt.data.schema import Cause, Segment, SegmentError, validate

__all__ = ["Cause", "Segment", "SegmentError", "validate"]
