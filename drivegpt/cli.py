"""The ``drivegpt`` command: subcommands dispatch to hydra entry points.

    drivegpt fleet generate out=runs/fleet segments=8 seconds=60
    drivegpt data inspect shards=runs/fleet/shards
    drivegpt train tokenizer experiment=tiny data.shards=...

Each subcommand is a stage of ``drivegpt.stages.REGISTRY``: a config in ``configs/`` (the
stage's primary config) and a module with ``run(cfg) -> dict`` that does the work, writes
``run_dir/metrics.json`` and returns the metrics. Arguments after the subcommand are hydra overrides (``key=value``), so hydra's own
flags work too (``--cfg job`` prints the composed config, ``--help`` the config groups).
"""

from __future__ import annotations

import sys

import hydra

from drivegpt import __version__, hostmem
from drivegpt.stages import REGISTRY, StageSpec, load

CONFIG_PATH = "pkg://drivegpt.configs"
VERSION_BASE = "1.3"


# The commands are the stage registry's (drivegpt.stages.REGISTRY), which the pipeline reads too.
Command = StageSpec
COMMANDS: list[Command] = list(REGISTRY.values())


def _usage() -> str:
    width = max(len(" ".join(c.words)) for c in COMMANDS)
    lines = [
        "usage: drivegpt <command> [key=value ...]",
        "",
        "DriveGPT: learn a driving simulator from fleet video, train a policy in it, export it.",
        "",
        "commands:",
    ]
    lines += [f"  {' '.join(c.words):<{width}}  {c.help}" for c in COMMANDS]
    lines += [
        "",
        "Overrides are hydra's: run_dir=DIR experiment=tiny data.shards=PATH ...",
        "`drivegpt <command> --cfg job` prints the composed config.",
    ]
    return "\n".join(lines)


def find_command(argv: list[str]) -> tuple[Command, list[str]] | None:
    """Longest match of the leading words of ``argv`` against the command table."""
    best = None
    for cmd in COMMANDS:
        n = len(cmd.words)
        if tuple(argv[:n]) == cmd.words and (best is None or n > len(best.words)):
            best = cmd
    if best is None:
        return None
    return best, argv[len(best.words):]


def load_run(cmd: Command):
    return load(cmd.name)


def invoke(cmd: Command, overrides: list[str]):
    """Run ``cmd`` as a hydra application with ``overrides`` (hydra flags included)."""
    run = load_run(cmd)

    @hydra.main(config_path=CONFIG_PATH, config_name=cmd.config, version_base=VERSION_BASE)
    def _main(cfg):
        return run(cfg)

    saved = sys.argv
    sys.argv = ["drivegpt " + " ".join(cmd.words), *overrides]
    try:
        return _main()
    finally:
        sys.argv = saved


SIGTERM_EXIT = 128 + 15  # the shell's status for "terminated by SIGTERM"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    found = find_command(argv)
    if found is None:
        print(f"drivegpt: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    cmd, overrides = found
    hostmem.tune()  # reuse freed tensor memory instead of page-faulting it in again (drivegpt.hostmem)
    try:
        invoke(cmd, overrides)
    except SystemExit as e:  # Lightning's SIGTERMException is a SystemExit without a code (status 0)
        if type(e).__name__ != "SIGTERMException":
            raise
        print(f"drivegpt {' '.join(cmd.words)}: stopped by SIGTERM after saving its checkpoint; the stage is "
              "not complete (no DONE): re-run the same command to resume", file=sys.stderr)
        return SIGTERM_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
