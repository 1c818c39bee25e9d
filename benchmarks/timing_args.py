"""The options the kernel benchmark scripts share (ops.py, timing_method.py, dispatch.py)."""

from __future__ import annotations

import argparse

import torch


def timing_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with --threads and --min-run-time; add the script's own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and kernel threads")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    return parser
