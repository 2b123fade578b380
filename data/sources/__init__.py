"""Fleet-log sources: each converts some recording into ``data.schema.Segment``s.

Every source is an indexed, picklable object with ``n_items`` and ``make_item(i) -> Segment``
(``data.shards.write_shards`` calls ``make_item`` in worker processes):

- ``comma2k19``: comma2k19 segment directories (video.hevc + global_pose/);
- ``csv_video``: any video file plus a CSV of per-frame poses, speed and labels;
- ``gym_recorder``: record any gymnasium env that renders RGB frames (CarRacing-v3 example).

``SOURCES`` maps ``source=`` names of ``drivegpt data ingest`` to ``module:Class``; the
synthetic fleet (``source=procedural``) is the road world's own source
(``drivegpt.sim.roadworld.source``, above this layer), added by the ingest stage.
"""

from drivegpt.data.sources.common import Source, SourceError

SOURCES = {
    "comma2k19": "drivegpt.data.sources.comma2k19:Comma2k19Source",
    "csv_video": "drivegpt.data.sources.csv_video:CsvVideoSource",
    "gym": "drivegpt.data.sources.gym_recorder:GymSource",
}

__all__ = ["SOURCES", "Source", "SourceError"]
