"""One loader for every model artifact (tokenizer, world model, policy): safe, and kind-aware.

An artifact is one ``torch.save`` file of plain data only: ``{"kind", "config", "state_dict",
...}`` where ``config`` and every other entry are JSON values (checked when saving) and
``state_dict`` holds tensors. It is read with ``torch.load(weights_only=True)``: the
restricted unpickler builds tensors and containers and nothing else, so loading a file
shared by a colleague or downloaded cannot run code. A file that needs more than that is
refused with ``UnsafeCheckpointError`` (nothing of it runs).

``read_artifact(path, kind)`` also knows what the file is: a directory is searched for the
kind's file (``tokenizer.pt``, ``world_model.pt``, ``policy.pt``, then Lightning's
``checkpoints/last.ckpt``); a Lightning checkpoint of the kind's training module is
recognised by its hyper-parameters; an artifact of another kind raises
``WrongKindError`` naming both kinds, and anything else ``NotACheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from drivegpt.runs import atomic_path

TOKENIZER = "drivegpt-tokenizer"
WORLD_MODEL = "drivegpt-world-model"
POLICY = "drivegpt-policy"


@dataclass(frozen=True)
class KindSpec:
    files: tuple[str, ...]  # what a run directory holds, in order of preference
    lightning_config: str  # hyper_parameters key of the Lightning module's config
    lightning_prefix: str  # state_dict prefix of the model inside the Lightning module
    what: str  # for messages


KINDS: dict[str, KindSpec] = {
    TOKENIZER: KindSpec(("tokenizer.pt", "checkpoints/last.ckpt"), "tokenizer_config", "model.", "tokenizer"),
    WORLD_MODEL: KindSpec(("world_model.pt", "checkpoints/last.ckpt"), "model_config", "model.", "world model"),
    POLICY: KindSpec(("policy.pt", "checkpoints/policy.pt"), "policy_config", "policy.", "policy"),
}

CONVERT_HINT = ("to convert a checkpoint of an earlier layout that you trust: unpickle it once in a trusted "
                "session (torch.load with weights_only off), then re-save its model with "
                "save_tokenizer / save_world_model / save_policy")


class NotACheckpointError(ValueError):
    """The file is not a DriveGPT checkpoint at all."""


class WrongKindError(NotACheckpointError):
    """A DriveGPT checkpoint, but of another kind than the one asked for."""


class UnsafeCheckpointError(NotACheckpointError):
    """Loading the file would need the full unpickler (it could run code): refused."""


@dataclass
class Artifact:
    kind: str
    config: dict
    state_dict: dict
    path: Path
    blob: dict = field(repr=False, default_factory=dict)  # every stored entry (meta, extras, ...)

    def get(self, key: str, default: Any = None) -> Any:
        return self.blob.get(key, default)


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples -> lists); raises naming ``where`` otherwise."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except TypeError as e:
        raise TypeError(f"{where}: checkpoints store JSON values only ({e})") from None


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples detached and on the CPU: what a
    state file must hold so that a machine without the training device loads it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def state_sha256(tensors) -> str:
    """SHA-256 of named tensors ((name, tensor) pairs, e.g. ``module.state_dict().items()``), in
    name order: equal digests mean the same weights bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype (bf16 too)
    return h.hexdigest()


def save_artifact(path: str | Path, kind: str, config: dict, state_dict: dict, **entries: Any) -> Path:
    """Atomically write an artifact: kind, JSON ``config``, CPU tensors, JSON ``entries``."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: one of {sorted(KINDS)}")
    blob = {"kind": kind, "config": _json_value(config, f"{path}: config"),
            "state_dict": to_cpu(state_dict)}
    for key, value in entries.items():
        blob[key] = _json_value(value, f"{path}: {key}")
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def resolve(path: str | Path, kind: str) -> Path:
    """A file, or the kind's file inside a run directory."""
    p = Path(path)
    what = KINDS[kind].what
    if p.is_dir():
        cand = [p / name for name in KINDS[kind].files]
        for c in cand:
            if c.exists():
                return c
        raise FileNotFoundError(f"{p}: a directory without a {what} checkpoint "
                                f"(looked for {', '.join(str(c) for c in cand)})")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such {what} checkpoint")
    return p


def sniff(path: Path) -> str | None:
    """What a file that cannot be a torch checkpoint is (None when it may be one)."""
    import zipfile

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        if not any(n.endswith("/data.pkl") for n in names):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            return f"a zip archive without torch's data.pkl (members: {shown})"
        return None
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive (a data shard?)"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch's legacy format
        return None
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError:
            pass
    return "not a torch file (no zip or pickle header)"


def load_blob(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of a file: plain containers and tensors only."""
    p = Path(path)
    what = sniff(p) if p.is_file() else None
    if what is not None:
        raise NotACheckpointError(f"{p}: not a readable torch checkpoint: {what}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = _unpickler_reason(str(e))
        if "Unsupported global" in why:
            raise UnsafeCheckpointError(
                f"{p}: refused: it stores Python objects that only the full unpickler builds, and that "
                f"can run code ({why}); {CONVERT_HINT}") from None
        raise NotACheckpointError(f"{p}: not a readable torch checkpoint ({why})") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise NotACheckpointError(f"{p}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict):
        raise NotACheckpointError(f"{p}: not a DriveGPT checkpoint (a {type(blob).__name__}, not a dict)")
    return blob


def _unpickler_reason(message: str) -> str:
    """The restricted unpickler's own reason, without torch's advice to turn the check off."""
    tail = message.split("WeightsUnpickler error:", 1)[-1].strip()
    first = tail.splitlines()[0].strip() if tail else "unreadable"
    return first.split(" Check the documentation")[0].split(" Please use")[0].strip().rstrip(".")


def kind_of(blob: dict) -> str | None:
    """The artifact kind of a loaded file (also for Lightning checkpoints of the training modules)."""
    if isinstance(blob.get("kind"), str):
        return blob["kind"]
    hp = blob.get("hyper_parameters")
    if isinstance(hp, dict) and isinstance(blob.get("state_dict"), dict):
        for kind, spec in KINDS.items():
            if spec.lightning_config in hp:
                return kind
    return None


def read_artifact(path: str | Path, kind: str) -> Artifact:
    """The artifact of ``kind`` at ``path`` (file or run directory), loaded safely."""
    spec = KINDS[kind]
    p = resolve(path, kind)
    try:
        blob = load_blob(p)
    except (UnsafeCheckpointError, WrongKindError):
        raise
    except NotACheckpointError as e:
        raise NotACheckpointError(f"{e}; expected a DriveGPT {spec.what} checkpoint ({' or '.join(spec.files)} "
                                  f"written by drivegpt, or the run directory holding it)") from None
    found = kind_of(blob)
    if found is None:
        raise NotACheckpointError(f"{p}: not a DriveGPT {spec.what} checkpoint (no key 'kind' and no "
                                  f"Lightning hyper_parameters.{spec.lightning_config})")
    if found != kind:
        other = KINDS[found].what if found in KINDS else found
        raise WrongKindError(f"{p}: key 'kind' is {found!r} (a {other} checkpoint), expected {kind!r} "
                             f"(a {spec.what} checkpoint)")
    if "kind" not in blob:  # a Lightning checkpoint of the training module
        n = len(spec.lightning_prefix)
        state = {k[n:]: v for k, v in blob["state_dict"].items() if k.startswith(spec.lightning_prefix)}
        hp = blob["hyper_parameters"]
        config = dict(hp[spec.lightning_config])
        return Artifact(kind, config, state, p, {"hyper_parameters": hp, "from_lightning": str(p),
                                                 "global_step": blob.get("global_step")})
    for key in ("config", "state_dict"):
        if key not in blob:
            raise NotACheckpointError(f"{p}: {spec.what} checkpoint lacks key {key!r}")
    return Artifact(kind, dict(blob["config"]), blob["state_dict"], p, blob)


def lightning_global_step(path: str | Path) -> int:
    """``global_step`` of a Lightning checkpoint, read safely (0 when it cannot be read so)."""
    try:
        return int(load_blob(path).get("global_step", 0))
    except NotACheckpointError:
        return 0


__all__ = ["Artifact", "KINDS", "NotACheckpointError", "POLICY", "TOKENIZER", "UnsafeCheckpointError",
           "WORLD_MODEL", "WrongKindError", "kind_of", "lightning_global_step", "load_blob", "read_artifact",
           "resolve", "save_artifact"]
