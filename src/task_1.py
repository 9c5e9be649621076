#!/usr/bin/env python
"""task_1: the seed's script, kept for its command line; the work is done by dataferry.

python src/task_1.py --task task_1 --config_file config.json
python src/task_1.py --file_save_path PATH --remote_file_path PATH ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # src/dataferry without installing

from dataferry.cli import run_seed_script

if __name__ == "__main__":
    sys.exit(run_seed_script("task_1", __file__))
