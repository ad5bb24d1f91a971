"""Ray job entrypoint of the decontam stage: `ray job submit --working-dir . -- python jobs/decontam.py [CONFIG] --storage ROOT`
(the flags of `valley decontam`)."""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["decontam", *enter_job_dir(sys.argv[1:])]))
