"""The ``beit-data`` command: one subcommand per job."""
from __future__ import annotations

import argparse
import importlib
import sys

from beit_data.errors import BeitDataError

# subcommand -> module in jobs/ that provides add_arguments(parser) and run(args)
COMMANDS = {
    "demo": "jobs.demo",
    "shard": "jobs.shard",
    "tokenize": "jobs.tokenize",
    "convert-tokenizer": "jobs.convert_tokenizer",
    "pretrain": "jobs.pretrain",
    "finetune": "jobs.finetune",
    "verify": "jobs.verify",
    "inspect": "jobs.inspect",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beit-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``beit-data`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BeitDataError as e:
        print(f"beit-data {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"beit-data {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def run_module(module_name: str, argv: list[str] | None = None) -> int:
    """``python -m jobs.X`` entry: the same as ``beit-data X``."""
    name = next(k for k, v in COMMANDS.items() if v == module_name)
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
