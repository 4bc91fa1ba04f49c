"""The permission bits of a file written under a temporary name, then renamed into place.

`tempfile.mkstemp` creates its file 0600 whatever the umask, so without a chmod every model or
dataset file written that way would be readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def umask() -> int:
    """The process's umask; the only way to read it is to set it, so it is put back at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replacement_mode(target: Path) -> int:
    """The mode for a file about to be renamed onto `target`: an existing file's permission bits
    (`cp` onto an existing file keeps them too, so a read-only copy stays read-only), else what
    open() gives a new file, 0666 less the umask."""
    try:
        existing = target.stat()  # through a symlink: the file it names
    except OSError:  # none there (or unreadable): a new file
        return 0o666 & ~umask()
    return stat.S_IMODE(existing.st_mode) & 0o777 if stat.S_ISREG(existing.st_mode) else 0o666 & ~umask()
