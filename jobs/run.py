"""Ray job entrypoint of a whole experiment (data → label → train → generate → grade → report).

    ray job submit --working-dir . -- python jobs/run.py jobs/configs/demo.yaml \
        --storage runs/demo --chdir "$PWD"
    ray job submit --working-dir . --runtime-env-json '{"env_vars": {"VALLEY_STORAGE": "s3://bucket/runs"}}' \
        -- python jobs/run.py jobs/configs/paper.yaml

`--chdir DIR` runs the job in DIR (see jobs/data.py); paper.yaml's paths are absolute already.
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["run", *enter_job_dir(sys.argv[1:])]))
