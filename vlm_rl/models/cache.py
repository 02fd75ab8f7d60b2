"""Build-once artefacts on disk (tokenizer, tiny models), safe when several processes ask at once.

Ray workers, learners and test sessions may all want the same tiny model at the same moment; the first
builds it under an exclusive file lock into a temporary folder and renames it into place, the others
wait on the lock and then find the finished folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Marker written last into a built folder: its presence means the build finished.
DONE_MARKER = ".vlm-rl-complete"


def cache_root() -> Path:
    """``$VLM_RL_CACHE`` or ``~/.cache/vlm-rl``."""
    return Path(os.environ.get("VLM_RL_CACHE", Path.home() / ".cache" / "vlm-rl")).expanduser()


def is_built(path: Path) -> bool:
    return (Path(path) / DONE_MARKER).is_file()


def build_once(target: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return ``target``, calling ``build(tmp_dir)`` first if it is not yet built.

    ``build`` writes into an empty temporary folder beside ``target``; the folder is renamed to
    ``target`` only when ``build`` returns, so a crash never leaves a half-written model behind.
    """
    target = Path(target).expanduser().resolve()
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_built(target):  # another process finished while we waited
                return target
            if target.exists() and any(target.iterdir()):  # never delete someone else's files
                raise FileExistsError(f"{target}: exists, is not empty and is not a finished vlm-rl build")
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            try:
                build(tmp)
                (tmp / DONE_MARKER).write_text("ok\n")
                if target.exists():
                    target.rmdir()
                os.rename(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target

