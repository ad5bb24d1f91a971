"""Ray job entrypoint of the import stage: `ray job submit --working-dir . -- python jobs/import.py [CONFIG] --storage ROOT`
(the flags of `valley import`)."""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["import", *enter_job_dir(sys.argv[1:])]))
