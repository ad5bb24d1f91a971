"""`valley decontam [config.yaml] --traces DIR --problems LCB...`: arguments -> DecontamConfig -> run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("decontam", help="n-gram/title/URL overlap of training questions with the evaluation problems")
    p.add_argument("config", nargs="?", help="YAML config file (DecontamConfig fields)")
    p.add_argument("--traces", default=None, help="data-stage output dir, or Parquet traces (file, dir or glob)")
    p.add_argument("--problems", nargs="+", default=None, metavar="FILE",
                   help="evaluation problems: LCB jsonl/json(.gz) or problems Parquet")
    p.add_argument("--drop", action="store_true", default=None, help="write traces/ without the contaminated ones")
    p.add_argument("--name", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. ngram=13, min_overlap=0.2, kinds=[ngram,url]")
    add_common(p)


def run_from_args(args: argparse.Namespace) -> Any:
    from valley import config as config_mod
    from valley.decontam.config import DecontamConfig
    from valley.decontam.stage import run_decontam
    from valley.storage import Storage

    data = config_mod.load_yaml(args.config) if args.config else {}
    for key in ("traces", "problems", "drop", "name"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    data = config_mod.apply_overrides(data, args.overrides)
    cfg = config_mod.build(DecontamConfig, data, source=args.config or "valley decontam")
    return run_decontam(cfg, Storage(args.storage))
