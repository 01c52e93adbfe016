"""``python -m dedicated.quantize_job run --config /etc/dedicated/job/config.json``: the Job's entry point."""

import sys

from dedicated.quantize_job.cli import main

if __name__ == "__main__":
    sys.exit(main())
