"""Compose stage configs without the CLI (tests, the pipeline, notebooks).

    cfg = compose("fleet_generate", ["experiment=tiny", f"run_dir={tmp}"])
"""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra overrides, as the CLI would."""
    from hydra import compose as _compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="drivegpt.configs", version_base="1.3"):
        return _compose(config_name=config_name, overrides=list(overrides))
