"""Ray job entrypoint of the train stage.

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/train_qwen7b.yaml --storage s3://bucket/runs
"""

import sys

from valley.cli import main
from valley.runtime import enter_job_dir

if __name__ == "__main__":
    sys.exit(main(["train", *enter_job_dir(sys.argv[1:])]))
