"""``drivegpt data ingest source=procedural|comma2k19|csv_video|gym path=... out=...``.

Builds the source named by ``source`` from its config block, writes its segments to
webdataset shards under ``out`` with ``drivegpt.data.shards.write_shards`` (``workers``
processes, resumable: finished shards are skipped on a re-run) and writes the fleet summary
(``drivegpt.data.inspect``) to ``run_dir/metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from drivegpt.data.inspect import format_summary, inspect_shards
from drivegpt.data.shards import write_shards
from drivegpt.data.sources import SOURCES as DATA_SOURCES
from drivegpt.data.sources.common import SourceError, import_path
from drivegpt.data.video import DEFAULT_CODEC
from drivegpt.runs import write_metrics
from drivegpt.sim.roadworld.source import ProceduralSource
from drivegpt.stages.common import plain

# source= names: the road world's synthetic fleet, then the data layer's log readers.
SOURCES = {"procedural": ProceduralSource, **DATA_SOURCES}


def make_source(cfg):
    """The source object for ``cfg.source`` (n_items + make_item)."""
    name = str(cfg.source)
    if name not in SOURCES:
        raise SourceError(f"data ingest: unknown source={name!r}; choose one of {', '.join(SOURCES)}")
    cls = SOURCES[name]
    cls = import_path(cls) if isinstance(cls, str) else cls
    size = dict(height=int(cfg.data.frame_height), width=int(cfg.data.frame_width))
    block = plain(cfg.get(name)) if name != "gym" else {}
    if name == "procedural":
        return cls(segments=cfg.segments, seconds=cfg.seconds, sim=plain(cfg.sim),
                   first_seed=cfg.first_seed, **size)
    if name == "gym":
        missing = [k for k in ("env_id", "policy", "pose", "disengage") if OmegaConf.is_missing(cfg.gym, k)]
        if missing:
            raise SourceError(f"data ingest: source=gym needs {', '.join('gym.' + k for k in missing)} "
                              "(import paths module:attr; see README 'Bring your own data'), or a preset: "
                              "gym=car_racing")
        block = plain(cfg.get(name))
        return cls(episodes=cfg.segments, seconds=cfg.seconds, first_seed=cfg.first_seed, **size, **block)
    if cfg.path is None:
        raise SourceError(f"data ingest: source={name} needs path=... (the input files)")
    return cls(str(cfg.path), **size, **block)


def run(cfg) -> dict:
    src = make_source(cfg)
    out = Path(cfg.out)
    if src.n_items == 0:
        raise SourceError(f"data ingest: source={cfg.source} path={cfg.path} has no items")
    t0 = time.perf_counter()
    manifest = write_shards(out, src.n_items, src.make_item, maxcount=int(cfg.data.shard_maxcount),
                            workers=int(cfg.workers), prefix=str(cfg.source),
                            codec=str(cfg.data.get("codec", DEFAULT_CODEC)))
    elapsed = time.perf_counter() - t0
    summary = inspect_shards(out, sheet_path=None)
    summary.update(source=str(cfg.source), path=None if cfg.path is None else str(cfg.path), out=str(out),
                   shards=len(manifest["shards"]), complete=bool(manifest["complete"]),
                   ingest_seconds=elapsed)
    print(format_summary(summary))
    print(f"wrote {summary['shards']} shards to {out} in {elapsed:.1f} s")
    write_metrics(Path(cfg.run_dir), summary)
    return summary
