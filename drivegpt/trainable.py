"""The contract every trainable component keeps (ground floor).

Each model -- the tokenizer, the world model, the policy -- exposes

    loss, parts = model.compute_loss(batch, **settings)

(IRIS style): ``loss`` is the scalar to minimise, ``parts`` names its terms (detached or not)
for logging. The Lightning modules (``TokenizerModule``, ``WorldModelModule``, ``BCModule``)
are thin: they prepare the batch, call ``compute_loss``, step the optimisers and log ``parts``.
A caller that needs the forward outputs as well passes a dict as ``outputs`` and
``compute_loss`` fills it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

LossParts = dict[str, torch.Tensor]


@runtime_checkable
class Trainable(Protocol):
    def compute_loss(self, batch: Any, **settings: Any) -> tuple[torch.Tensor, LossParts]: ...
