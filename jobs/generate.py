"""Ray job entrypoint of the generate stage.

    ray job submit --working-dir . -- python jobs/generate.py jobs/configs/generate_lcb_vllm.yaml --storage s3://bucket/runs
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["generate", *enter_job_dir(sys.argv[1:])]))
