import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Keep tests on 2 cores from oversubscribing each other.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~20x faster single-threaded on a shared 2-core machine (no thread spinning).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter):
    """Say loudly, at the end of every run, which tests were skipped and why: a skipped test
    checks nothing (e.g. the QNN HTP tests where onnxruntime-qnn cannot load), and a green run
    must not hide that behind a count."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, list[str]] = {}
    for rep in skipped:
        why = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons.setdefault(why.removeprefix("Skipped: "), []).append(rep.nodeid)
    tr = terminalreporter
    tr.write_sep("!", f"{len(skipped)} TEST(S) SKIPPED: what they check was NOT tested in this run",
                 red=True, bold=True)
    for why, ids in reasons.items():
        tr.write_line(f"NOT TESTED ({len(ids)}): {why}", red=True, bold=True)
        for nodeid in ids:
            tr.write_line(f"    {nodeid}")


@pytest.fixture(scope="session")
def policy_ckpt(tmp_path_factory):
    """A small saved policy (32x64 frames, 3 context frames) for the export tests; its actor's
    last layer is spread so the actions are not all ~0 before training."""
    import torch

    from drivegpt.rl.checkpoint import save_policy

    from drivegpt.rl.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    p = Policy(PolicyConfig(context_frames=3, frame_height=32, frame_width=64, channels=(8, 16, 16, 16),
                            pool_grid=(2, 4), frame_features=16, bottleneck_dim=16, hidden=32))
    torch.nn.init.normal_(p.actor[-1].weight, std=0.3)  # untrained actor starts near 0: spread the actions
    return save_policy(p, tmp_path_factory.mktemp("policy") / "policy.pt")
