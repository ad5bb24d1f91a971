"""Ray job entrypoint of the report stage.

    ray job submit --working-dir . -- python jobs/report.py jobs/configs/report.yaml --storage s3://bucket/runs
    python jobs/report.py cfg.yaml --storage runs/x --set n_boot=2000

`--chdir DIR` runs the job in DIR (see jobs/prepare_data.py).

Joins the cluster the job runs on (RAY_ADDRESS, set by `ray job submit`) or starts an embedded Ray,
scores every run as a Ray task, and prints where results.parquet, report.md and the plots went.
"""

from __future__ import annotations

import argparse
import json
import sys

from valley import runtime
from valley.cli import DEFAULT_STORAGE, run_stage
from valley.errors import ValleyError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML with the fields of valley.report.config.ReportConfig")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage root: a local dir or s3://bucket/prefix")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ray-address", default=None)
    args = p.parse_args(runtime.enter_job_dir(sys.argv[1:] if argv is None else argv))
    try:
        runtime.init(args.ray_address)
        result = run_stage("report", args.config, args.overrides, args.storage)
    except ValleyError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
