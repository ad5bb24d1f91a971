"""Ray job entrypoint of the data stage.

    ray job submit --working-dir . -- python jobs/data.py jobs/configs/data_demo.yaml \
        --storage runs/jobs --chdir "$PWD"

`--chdir DIR` (every entrypoint here) runs the job in DIR, so relative paths resolve as they do in your
checkout: the job's own working directory is an upload of --working-dir without git-ignored files
(demo-data/, runs/). Without it, give absolute paths or URIs every node can read.
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["data", *enter_job_dir(sys.argv[1:])]))
