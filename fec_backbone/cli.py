"""The ``fec`` command: utilities around the FEC backbone.

    fec flops [--models fec_small fec_base] [--size 224]
"""
from __future__ import annotations

import argparse
from typing import List, Optional

MODELS = ["fec_small", "fec_base", "fec_large"]


def _flops(args: argparse.Namespace) -> int:
    from .flops import flops_table

    print(f"Parameters and fvcore FLOPs at {args.size}x{args.size} px (official: 5,727,528/1.366G, "
          "15,086,848/3.350G, 29,720,344/6.509G)")
    print(flops_table(args.models, args.size))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="print parameters and fvcore FLOPs per model")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--size", type=int, default=224, help="square input size in pixels")
    p.set_defaults(func=_flops)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
