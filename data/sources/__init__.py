"""Fleet-log sources: each converts some recording into ``data.schema.Segment``s.

Every source is an indexed, picklable object with ``n_items`` and ``make_item(i) -> Segment``
(``data.shards.write_shards`` calls ``make_item`` in worker processes):

- ``procedural``: the synthetic fleet driven in the road world (``drivegpt fleet generate``);
- ``comma2k19``: comma2k19 segment directories (video.hevc + global_pose/);
- ``csv_video``: any video file plus a CSV of per-frame poses, speed and labels;
- ``gym_recorder``: record any gymnasium env that renders RGB frames (CarRacing-v3 example).

``SOURCES`` maps the ``source=`` names of ``drivegpt data ingest`` to ``module:Class``.
"""

from drivegpt.data.sources.common import Source, SourceError

SOURCES = {
    "procedural": "drivegpt.data.sources.procedural:ProceduralSource",
    "comma2k19": "drivegpt.data.sources.comma2k19:Comma2k19Source",
    "csv_video": "drivegpt.data.sources.csv_video:CsvVideoSource",
    "gym": "drivegpt.data.sources.gym_recorder:GymSource",
}

__all__ = ["SOURCES", "Source", "SourceError"]
