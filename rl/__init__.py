"""Policy learning: the policy network, behaviour cloning, PPO in the learned simulator,
closed-loop evaluation in the ground-truth road world.

Public surface: ``Policy``, ``PolicyConfig``, ``load_policy``, ``save_policy``.
"""

from drivegpt.rl.checkpoint import load_policy, save_policy
from drivegpt.rl.policy import Policy, PolicyConfig

__all__ = ["Policy", "PolicyConfig", "load_policy", "save_policy"]
