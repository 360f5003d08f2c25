"""The parts of scripts/make_fixtures.py: one module per fixture part, plus the check modes.

The entry point is scripts/make_fixtures.py; see its docstring and scripts/README.md.
"""

import os

# Before the libraries are imported: no progress bars, never try the Hub.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
