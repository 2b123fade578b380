"""Helpers every stage shares: plain dicts from config nodes, the run directory."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


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
