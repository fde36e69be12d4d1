"""``python -m grafting_core``: the lab's command line (see grafting_core.lab.cli)."""

import sys

from grafting_core.lab.cli import main

sys.exit(main())
