"""One safe, kind-aware artifact loader (drivegpt.checkpoints) behind every model loader."""

import pathlib
import pickle

import pytest
import torch

from drivegpt.checkpoints import (NotACheckpointError, UnsafeCheckpointError, WrongKindError, read_artifact,
                                  save_artifact)
from drivegpt.rl.checkpoint import load_policy
from drivegpt.tokenizer import load_tokenizer
from drivegpt.world_model import load_world_model


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


LOADERS = [load_policy, load_tokenizer, load_world_model]


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, loader):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "drivegpt-policy", "config": {}, "state_dict": {}, "meta": Payload(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt: refused"):
        loader(evil)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"  # a plain pickle, not torch's zip format
    raw.write_bytes(pickle.dumps({"kind": "drivegpt-tokenizer", "x": Payload(marker)}))
    with pytest.raises(NotACheckpointError, match="evil.pkl"):
        loader(raw)
    assert not marker.exists()


def test_the_loader_knows_the_kind(tmp_path):
    path = save_artifact(tmp_path / "tok.pt", "drivegpt-tokenizer", {"a": [1, 2]}, {"w": torch.ones(2)},
                         global_step=3)
    art = read_artifact(path, "drivegpt-tokenizer")
    assert art.config == {"a": [1, 2]} and art.get("global_step") == 3 and torch.equal(art.state_dict["w"], torch.ones(2))
    with pytest.raises(WrongKindError, match=r"tok.pt: key 'kind' is 'drivegpt-tokenizer' \(a tokenizer checkpoint\), "
                                             r"expected 'drivegpt-world-model'"):
        load_world_model(path)
    with pytest.raises(WrongKindError, match="a tokenizer checkpoint"):
        load_policy(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(NotACheckpointError, match="other.pt: not a DriveGPT policy checkpoint"):
        read_artifact(tmp_path / "other.pt", "drivegpt-policy")
    with pytest.raises(TypeError, match="JSON values only"):
        save_artifact(tmp_path / "x.pt", "drivegpt-policy", {"p": pathlib.Path("x")}, {})


@pytest.mark.parametrize("content,what", [
    (b"time,x,y\n0,0,0\n", "a text file"),
    (b"", r"an empty file \(0 bytes\)"),
    ("zip", r"a zip archive without torch's data.pkl \(members: notes.txt\)"),
    ("tar", r"a tar archive \(a data shard\?\)"),
])
def test_non_checkpoint_files_are_refused_clearly_by_every_loader(tmp_path, content, what):
    """Issue 14: before, eval world_model said `KeyError: "filename 'storages' not found"`."""
    import io
    import tarfile
    import zipfile

    from drivegpt.tokenizer import load_tokenizer

    path = tmp_path / "model.pt"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    elif content == "tar":
        with tarfile.open(path, "w") as t:
            info = tarfile.TarInfo("seg0000.meta.json")
            info.size = 2
            t.addfile(info, io.BytesIO(b"{}"))
    else:
        path.write_bytes(content)
    for loader, what_kind in ((load_world_model, "world model"), (load_tokenizer, "tokenizer"),
                              (load_policy, "policy")):
        with pytest.raises(NotACheckpointError, match=rf"model.pt: not a readable torch checkpoint: {what}; "
                                                      rf"expected a DriveGPT {what_kind} checkpoint"):
            loader(path)


def test_to_cpu_detaches_every_tensor_and_keeps_the_structure():
    """RL's state files (rl_state.pt, last_iterate.pt) go through to_cpu, so a run trained on a
    GPU resumes or is read on a machine without one; an optimizer state survives the trip."""
    import torch

    from drivegpt.checkpoints import to_cpu

    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(torch.ones(4, 3)).pow(2).sum().backward()
    opt.step()
    state = {"policy": m.state_dict(), "optimizer": opt.state_dict(), "iteration": 7, "pair": (m.weight, 2)}
    out = to_cpu(state)
    assert out["iteration"] == 7 and isinstance(out["pair"], tuple) and out["pair"][1] == 2
    assert not out["pair"][0].requires_grad and out["pair"][0].device.type == "cpu"
    assert torch.equal(out["pair"][0], m.weight.detach())
    fresh = torch.optim.Adam(m.parameters(), lr=0.1)
    fresh.load_state_dict(out["optimizer"])
    key = next(iter(fresh.state))
    assert torch.equal(fresh.state[key]["exp_avg"], opt.state[key]["exp_avg"])


def test_state_sha256_names_weights_bit_for_bit_in_any_dtype():
    from drivegpt.checkpoints import state_sha256

    state = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "s": torch.tensor(2.0), "on": torch.tensor([True, False]),
             "i": torch.arange(5)}
    digest = state_sha256(state.items())
    assert digest == state_sha256(reversed(list(state.items())))  # order of the pairs does not matter
    for key, other in (("s", torch.tensor(2.0 + 2 ** -20)), ("on", torch.tensor([True, True])),
                       ("w", state["w"].float()), ("i", torch.arange(5).reshape(5, 1))):
        assert state_sha256({**state, key: other}.items()) != digest, key  # value, dtype and shape count
