"""DriveGPT: learn a driving simulator from fleet video, train a policy in it, ship it to a car.

Public surface (kept small; heavy modules import torch lazily):
- ``drivegpt.runs``: run directories, atomic writes, ``metrics.json``.
- ``drivegpt.cli``: the ``drivegpt`` command.
"""

__version__ = "0.1.0"
