"""``python -m grafting_core``: the lab's command line (:mod:`grafting_core.lab.cli`).

The command line needs the lab's extras (pandas, plotly, ...), which a library-only install
(``pip install grafting-core``) lacks: then it says which extra to install and exits with
status 2, as for a usage error, instead of a traceback.
"""

from __future__ import annotations

import sys

#: What to install for the command line (``[project.optional-dependencies] lab``).
LAB_INSTALL = "pip install 'grafting-core[lab]'"


def main() -> int:
    """Run the lab's command line, or explain what it needs when the lab's extras are missing."""
    try:
        from grafting_core.lab.cli import main as lab_main
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == "grafting_core" or missing.startswith("grafting_core."):
            raise  # a module of the project itself: a bug, not a missing extra
        print(
            f"python -m grafting_core runs the Grafting Lab's command line, which needs the "
            f"lab's extras (missing here: {missing or error}). Install them with:\n"
            f"    {LAB_INSTALL}\n"
            "The optimizer library itself (from grafting_core import Graft) needs torch only.",
            file=sys.stderr,
        )
        return 2
    return lab_main()


if __name__ == "__main__":
    sys.exit(main())
