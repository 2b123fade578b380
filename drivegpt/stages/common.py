"""Helpers every stage shares: plain dicts from config nodes, the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def plain(node) -> dict:
    """A config node (DictConfig, mapping or None) as a plain, resolved dict."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def run_dir_of(cfg) -> Path:
    """``cfg.run_dir``, created."""
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class FrameRateMismatch(ValueError):
    """``data.fps`` in the config disagrees with the shards' ``meta.fps``."""


def bind_fps(cfg, shards=None) -> float:
    """Set ``cfg.data.fps`` from the data: the log rate is the shards' ``meta.fps``.

    ``data.fps: null`` (the default) follows the shards (logged); a number that disagrees with
    them is refused naming both. Without shards (``data.shards`` unset) the road world's
    ``sim.fps`` is used. Returns the rate.
    """
    from drivegpt.data.shard_reading import shards_fps

    spec = shards if shards is not None else cfg.data.get("shards")
    have = spec is not None and str(spec).strip() not in ("", "???")
    configured = cfg.data.get("fps")
    if not have:
        fps = float(configured if configured is not None else cfg.get("sim", {}).get("fps", 20.0))
        where = "sim.fps" if configured is None else "data.fps"
    else:
        fps, where = shards_fps(spec, skip_bad=bool(cfg.data.get("skip_bad", False)))
        if configured is not None and abs(float(configured) - fps) > 1e-6 * fps:
            raise FrameRateMismatch(
                f"data.fps={float(configured):g} but the shards were logged at meta.fps={fps:g} Hz ({where}); "
                f"the log rate is a property of the data: drop the data.fps override (null follows the "
                f"shards) or give shards logged at {float(configured):g} Hz")
        if configured is None:
            log.info("data.fps = %g Hz, from the shards' meta.fps (%s)", fps, where)
    with open_dict(cfg):
        cfg.data.fps = fps
    stride = int(cfg.data.get("stride") or 1)
    if have:
        log.info("windows read one frame in %d: %g Hz (data.fps %g / data.stride %d)", stride, fps / stride,
                 fps, stride)
    return fps
