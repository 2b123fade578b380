"""drivegpt.hostmem: freed tensor memory is reused instead of page-faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from drivegpt import cli, hostmem

_PROBE = r"""
import json, os, resource, sys
import torch
from drivegpt import hostmem
state = hostmem.tune() if sys.argv[1] == "tune" else {"tuned": False}
def cycle():  # a 256 MiB activation, written, then freed
    x = torch.empty(64 << 20, dtype=torch.float32)
    x.fill_(1.0)
    del x
for _ in range(12):  # glibc's heap grows to a few such blocks, then reuses them
    cycle()
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cycle()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"state": state, "faults": faults}))
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")


def _probe(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_malloc_reuses_a_freed_activation_without_page_faults():
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    default = _probe("default")
    tuned = _probe("tune")
    assert tuned["state"]["tuned"] is True
    # glibc's default: every 256 MiB allocation is a fresh mmap, faulted in page by page
    assert min(default["faults"]) > 0.5 * pages
    # tuned: once the heap has grown to hold a few, freed blocks are reused
    assert max(tuned["faults"]) < 0.05 * pages


@glibc_only
def test_the_opt_out_keeps_glibcs_defaults():
    off = _probe("tune", {"DRIVEGPT_MALLOC": "system"})
    assert off["state"] == {"tuned": False, "reason": "DRIVEGPT_MALLOC=system"}
    assert min(off["faults"]) > 0.5 * (256 << 20) // os.sysconf("SC_PAGE_SIZE")


def test_the_drivegpt_command_tunes_before_it_runs_a_stage(monkeypatch):
    calls = []
    monkeypatch.setattr(hostmem, "tune", lambda: calls.append("tune") or {"tuned": True})
    monkeypatch.setattr(cli, "invoke", lambda cmd, overrides: calls.append(("invoke", cmd.words)))
    assert cli.main(["data", "inspect", "shards=x"]) == 0
    assert calls == ["tune", ("invoke", ("data", "inspect"))]
