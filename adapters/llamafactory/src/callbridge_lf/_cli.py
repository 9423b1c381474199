"""``callbridge-lf``: ``llamafactory-cli train`` with the YAML's ``custom_callbacks``.

    callbridge-lf train train.yaml [key=value ...]   train (same overrides as llamafactory-cli)
    callbridge-lf check train.yaml [key=value ...]   validate both readers' keys, without training

Exit status: 0 done, 1 problems in the configuration (each printed with the file, the
key and a fix; nothing was loaded), 2 usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from callbridge import ConfigError

USAGE = """\
usage: callbridge-lf train FILE.yaml [key=value ...]
       callbridge-lf check FILE.yaml [key=value ...]

train   train with LLaMA-Factory (as `llamafactory-cli train`), building the callbacks the
        file declares under custom_callbacks with LLaMA-Factory's argument objects injected
check   report every problem of the file, LLaMA-Factory's keys and callbridge's, without
        training (exit 1 on problems)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("train", "check") or not rest:
        print(USAGE, end="", file=sys.stderr)
        return 2
    try:
        if command == "check":
            return _check(rest)
        from ._train import run_exp

        run_exp(rest)
    except ConfigError as exc:
        _report(exc)
        return 1
    return 0


def _check(args: list[str]) -> int:
    from ._config import callback_problems, lf_problems, read

    config = read(args)
    problems = lf_problems(config) + callback_problems(config)
    if problems:
        _report(ConfigError(problems))
        return 1
    print(f"{config.source}: ok ({len(config.callbacks.enabled)} callbacks)")
    return 0


def _report(exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"callbridge-lf: {count} problem{'s' if count > 1 else ''}, nothing was trained:",
          file=sys.stderr)  # fmt: skip
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
