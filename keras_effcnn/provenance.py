"""Where a result came from: the commit of the code that produced it.

Every results file (benchmarks, reproductions, development runs, ``keras-effcnn
train``) records the commit it was produced from; this is the one place that asks git.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(where: str | os.PathLike | None = None) -> str | None:
    """The HEAD commit of the git checkout holding ``where``, marked when tracked files are modified.

    Args:
        where: a path inside the checkout; default: this package's own folder.

    Returns:
        ``"<sha>"``, or ``"<sha> (+ uncommitted changes)"`` when tracked files differ from
        HEAD (a result from such a tree cannot be re-run from the commit alone);
        None outside a git checkout or without git.

    Example:

    ```python
    record["commit"] = git_commit()
    ```
    """
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent
    if cwd.is_file():
        cwd = cwd.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (+ uncommitted changes)" if dirty else "")
