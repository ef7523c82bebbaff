"""Owner-only directories for stored data: DATA_DIR, the SQLite registry's directory and the embedded stores'.

The registry holds every document's full text and the vector stores their chunks: a directory created with the
usual 0755 lets every user of a shared machine read them (EYES10). What the service creates is 0700 (mkdir
applies the umask, so a stricter one still wins); a directory that already exists keeps the mode its owner gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dirs(path: Path) -> None:
    """`path.mkdir(parents=True, exist_ok=True)`, with every directory it creates owner-only (pathlib gives the
    parents it creates 0777 minus the umask, whatever `mode` says)."""
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_private_dirs(path.parent)
        make_private_dirs(path)
    except OSError:
        if not path.is_dir():  # as mkdir(exist_ok=True): a file in the way is an error
            raise
