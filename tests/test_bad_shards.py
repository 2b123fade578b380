"""Issue 14, shards: a damaged shard is found by inspect (manifest checksums and counts), an
unfinished write is refused downstream with how to finish it, each bad input is counted once,
data.skip_bad is honoured by tokenize, and a truncated tar's message names file, key and member."""

import io
import tarfile
from pathlib import Path

import pytest
import torch

from drivegpt.config import compose
from drivegpt.data.inspect import inspect_shards
from drivegpt.data.shards import ShardError, write_shards
from drivegpt.data.shard_reading import IncompleteShardsError, expand_urls, iter_samples
from drivegpt.runs import read_json
from synth_fleet import make_segment


def _fleet(d, n=4, maxcount=2):
    return write_shards(d, n, lambda i: make_segment(seed=i, t=8, lane_mask=False), maxcount=maxcount,
                        progress=False)


def _garble_video(path: Path, key: str):
    """Rewrite the tar with ``key``'s video member replaced by garbage (other members intact)."""
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(path, "w") as t:
        for m, b in members:
            if m.name == f"{key}.frames.mp4":
                b = b"\x00\x00\x01 not a video " * 16
                m.size = len(b)
            t.addfile(m, io.BytesIO(b))


def test_inspect_finds_a_garbage_member_in_a_shard_it_does_not_sample(tmp_path):
    _fleet(tmp_path / "f")
    _garble_video(tmp_path / "f" / "shard-000001.tar", "seg0003")
    # before: exit 0 (only the contact sheet's first segment was decoded, no checksums checked)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: does not match .*manifest\.json.*sha256"):
        inspect_shards(tmp_path / "f", n_frames=1, per_segment=1, sheet_path=tmp_path / "sheet.png")
    out = inspect_shards(tmp_path / "f", n_frames=1, per_segment=1, skip_bad=True,
                         sheet_path=tmp_path / "sheet.png")
    assert out["shards_verified"] == 1 and out["bad_shards"] == 1
    # the damaged shard is decoded in full: its bad sample is found and counted once, the rest kept
    assert out["segments"] == 3
    assert out["skipped_bad"] == 2  # the shard's checksum + the one bad sample, each once
    assert any("seg0003" in e and "frames.mp4" in e for e in out["errors"])


def test_inspect_counts_a_truncated_shard_once_and_names_key_and_member(tmp_path):
    _fleet(tmp_path / "f")
    p = tmp_path / "f" / "shard-000001.tar"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError) as err:
        list(iter_samples(tmp_path / "f"))
    msg = str(err.value)
    # before: ('shard: corrupt or truncated tar (ReadError: ... @ <_io.BufferedReader ...>)', <stream>, path)
    assert msg.startswith(str(p) + ": sample 'seg0003', member 'seg0003.")
    assert "corrupt or truncated tar" in msg and "<_io" not in msg and "(\"" not in msg
    stats: dict = {}
    got = [s.segment_id for s in iter_samples(tmp_path / "f", skip_bad=True, stats=stats)]
    assert got == ["seg0000", "seg0001", "seg0002"]  # the half-read seg0003 is never yielded
    assert stats["skipped"] == 1  # before: 3 counted for 1 lost
    out = inspect_shards(tmp_path / "f", skip_bad=True, sheet_path=None)
    assert out["segments"] == 3 and out["bad_shards"] == 1 and out["skipped_bad"] == 2  # checksum + truncation


def test_incomplete_shard_directory_is_refused_with_how_to_finish(tmp_path):
    _fleet(tmp_path / "f")
    man = read_json(tmp_path / "f" / "manifest.json")
    man["complete"] = False
    man["shards"] = man["shards"][:1]
    (tmp_path / "f" / "manifest.json").write_text(__import__("json").dumps(man))
    with pytest.raises(IncompleteShardsError, match=r"manifest\.json: incomplete \(1 of 2 shards.*re-running"):
        list(iter_samples(tmp_path / "f"))
    with pytest.raises(IncompleteShardsError, match="resumes"):
        expand_urls(str(tmp_path / "f" / "shard-000000.tar"))  # one file of it too


def _tiny_tokenizer(tmp_path):
    from drivegpt.tokenizer import Tokenizer, save_tokenizer

    torch.manual_seed(0)
    model = Tokenizer(compose("train_tokenizer", ["experiment=tiny", "run_dir=/tmp/x"]).tokenizer).eval()
    return save_tokenizer(model, tmp_path / "tokenizer.pt")


def _tokenize(tmp_path, shards, ckpt, *extra):
    from drivegpt.stages.tokenize import run

    return run(compose("tokenize", ["experiment=tiny", f"run_dir={tmp_path / 'tok'}", f"data.shards={shards}",
                                    f"checkpoint={ckpt}", f"out={tmp_path / 'tokens'}", *extra]))


def test_partial_token_directory_is_refused(tmp_path):
    _fleet(tmp_path / "f")
    _tokenize(tmp_path, tmp_path / "f", _tiny_tokenizer(tmp_path))
    (tmp_path / "tokens" / "manifest.json").unlink()  # as a tokenize killed before its last part
    with pytest.raises(IncompleteShardsError, match=r"tokens: token directory has no manifest\.json.*"
                                                    r"drivegpt tokenize"):
        list(iter_samples(str(tmp_path / "tokens" / "*" / "*.tar")))
    from drivegpt.stages.train_world_model import token_meta

    with pytest.raises(IncompleteShardsError):  # the world model's first read refuses it
        token_meta(str(tmp_path / "tokens"))


def test_tokenize_honours_skip_bad_and_counts_once(tmp_path):
    _fleet(tmp_path / "f")
    _garble_video(tmp_path / "f" / "shard-000001.tar", "seg0002")
    ckpt = _tiny_tokenizer(tmp_path)
    with pytest.raises(ShardError, match=r"seg0002.*frames\.mp4"):
        _tokenize(tmp_path, tmp_path / "f", ckpt, "run_dir=" + str(tmp_path / "t0"), f"out={tmp_path / 't0'}")
    m = _tokenize(tmp_path, tmp_path / "f", ckpt, "data.skip_bad=true")  # before: ShardError anyway
    assert m["tokenize/segments"] == 3 and m["tokenize/skipped_bad"] == 1 and m["tokenize/complete"]
    ids = sorted(o["meta"]["segment_id"] for o in iter_samples(m["tokenize/shards"]))
    assert ids == ["seg0000", "seg0001", "seg0003"]


def test_every_shard_reader_honours_skip_bad(tmp_path):
    """The world model's token_meta, eval's held_out_items and the window loader skip a bad sample
    under data.skip_bad (counted once) and raise naming it without."""
    from drivegpt.data.loaders import window_dataset
    from drivegpt.stages.train_world_model import token_meta
    from drivegpt.world_model.evaluate import held_out_items
    from synth_fleet import make_token_item

    d = tmp_path / "tok"
    write_shards(d, 3, make_token_item, maxcount=3, progress=False)
    p = d / "shard-000000.tar"
    with tarfile.open(p) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(p, "w") as t:  # seg0000's speed array is garbage (readers do not check checksums)
        for m, b in members:
            if m.name == "seg0000.speed.npy":
                b = b"garbage"
                m.size = len(b)
            t.addfile(m, io.BytesIO(b))
    with pytest.raises(ShardError, match=r"sample 'seg0000'.*speed.npy"):
        token_meta(str(d))
    assert token_meta(str(d), skip_bad=True)["vocab_size"] == 1024
    with pytest.raises(ShardError, match="seg0000"):
        held_out_items(str(d), "train", 0.0, 10)
    assert [i["meta"]["segment_id"] for i in held_out_items(str(d), "train", 0.0, 10, skip_bad=True)] == \
        ["seg0001", "seg0002"]
    stats: dict = {}
    got = {w["segment_id"] for w in window_dataset(str(d), context_frames=2, stride=1, key="tokens", split="all",
                                                     shuffle_buffer=0, skip_bad=True, stats=stats)}
    assert got == {"seg0001", "seg0002"} and stats["skipped"] == 1
