"""Fleet logs: schema, sources, webdataset shards, loaders.

Public surface:
- ``data.schema``: ``Segment``, ``Cause``, ``validate``.
"""

from data.schema import Cause, Segment, SegmentError, validate

__all__ = ["Cause", "Segment", "SegmentError", "validate"]
