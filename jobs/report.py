"""Ray job entrypoint of the report stage: over the finished evaluations of a `valley run` study, or over the
runs a ReportConfig YAML lists (`experiment`, `runs`: each with its samples, verdicts and problems).

    ray job submit --working-dir . -- python jobs/report.py --partial --experiment valley-paper --storage s3://bucket/runs
    ray job submit --working-dir . -- python jobs/report.py my_report.yaml --storage s3://bucket/runs
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["report", *enter_job_dir(sys.argv[1:])]))
