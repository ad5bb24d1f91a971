"""Ray job entrypoint of the grade stage: `ray job submit --working-dir . -- python jobs/grade.py CONFIG --storage ROOT`."""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["grade", *enter_job_dir(sys.argv[1:])]))
