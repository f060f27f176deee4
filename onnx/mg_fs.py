"""Folder writes shared by the exporter and the reference generator: a result is built in a temporary
folder beside its destination and swapped in at the end, so an interrupted run never leaves a half
folder under the final name."""

import shutil
import tempfile
from pathlib import Path


def swap_in(tmp: Path, out: Path) -> None:
    """Moves the finished folder `tmp` to `out`, replacing whatever `out` held."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(trash / "old")
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)
