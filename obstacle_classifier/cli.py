"""The ``obstacle-classifier`` command line: offline tools around the model.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
User mistakes (bad paths, bad files, bad values) raise :class:`CliError` or ValueError and are
reported on stderr with a non-zero exit, never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .nn import MLP, flops_report


class CliError(Exception):
    """A user-facing error: printed as ``obstacle-classifier: error: <message>``, exit 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def _cmd_flops(args: argparse.Namespace) -> int:
    model = MLP(args.d, args.h, args.c, rng=0)
    print(flops_report(model, args.n))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='obstacle-classifier',
        description='Offline tools for the NumPy obstacle classifier.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    flops = commands.add_parser(
        'flops', help="matrix-product FLOPs of training vs inference (the brief's question)",
        description='Count the FLOPs of the matrix products the NumPy MLP performs for n '
                    'examples, in inference and in one training step, and derive the ratio.',
        epilog='example:\n  obstacle-classifier flops --d 16 --h 64 --c 8 --n 10000',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    flops.add_argument('--d', type=_positive_int, default=16, help='input width (default 16)')
    flops.add_argument('--h', type=_positive_int, default=64, help='hidden width (default 64)')
    flops.add_argument('--c', type=_positive_int, default=8, help='classes (default 8)')
    flops.add_argument('--n', type=_positive_int, default=10000,
                       help='examples (default 10000)')
    flops.set_defaults(handler=_cmd_flops)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CliError, ValueError, OSError) as exc:
        print(f'{parser.prog}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{parser.prog}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
