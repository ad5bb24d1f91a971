"""Ray job entrypoint of the label stage: `ray job submit --working-dir . -- python jobs/label.py CONFIG --storage ROOT`."""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["label", *enter_job_dir(sys.argv[1:])]))
