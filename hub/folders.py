"""Writing output folders all at once: into a temporary sibling first, then moved into place, so that a failure
never leaves a half-written pipeline or repo folder behind."""

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False):
    """Yields an empty temporary folder beside `output`; on success it becomes `output` (replacing an existing one
    only when `overwrite`), on any error it is removed and `output` is left as it was."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; choose another output folder or pass --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield tmp
        if output.exists():
            old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative POSIX path, size in bytes) of every file below `folder`, sorted."""
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def human_size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
