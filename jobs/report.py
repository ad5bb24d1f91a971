"""Ray job entrypoint of the report stage.

    ray job submit --working-dir . -- python jobs/report.py jobs/configs/report.yaml --storage s3://bucket/runs
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["report", *enter_job_dir(sys.argv[1:])]))
