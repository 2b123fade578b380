"""DriveGPT: learn a driving simulator from fleet video, train a policy in it, ship it to a car.

The one installed import name: ``drivegpt.data``, ``drivegpt.sim``, ``drivegpt.rl``,
``drivegpt.export`` and ``drivegpt.configs`` are the repository's top-level folders (setuptools
``package-dir``). Layers, top first (README "Architecture", checked by tests/test_layers.py):
stages (``drivegpt.stages``, cli, pipeline) > export > rl > sim.learned > world_model >
tokenizer > sim.roadworld > data > ground floor (``checkpoints``, ``runs``, ``frameops``,
``settings``, ``trainable``).
"""

__version__ = "0.1.0"
