"""A workload of random file operations, shared by the property test and the
torture test: creates, writes, appends, renames of files and folders, deletes,
editor-style atomic saves, moves in from outside and out of the root; and folder
operations: empty folders made and removed, a folder's mode changed, a file
replaced by a folder of the same name and back."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

NAMES = ["a", "b", "c.txt", "d1/a", "d1/b", "d1/sub/x", "d2/y", "d2/deep/z", "d3/q"]
DIRS = ["d1", "d2", "d3", "d1/sub", "d4"]
#: folder modes the workload gives (each lets its owner in and write: skynet writes into them)
DIR_MODES = [0o755, 0o700, 0o750, 0o775, 0o711]

def apply(src: Path, outside: Path, step: tuple, n: int) -> None:
    kind, *args = step
    try:
        if kind == "write":
            p = src / args[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(args[1])
        elif kind == "append":
            with open(src / args[0], "ab") as f:
                f.write(args[1])
        elif kind == "delete":
            (src / args[0]).unlink()
        elif kind == "rename":
            (src / args[1]).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src / args[0], src / args[1])
        elif kind == "rename_dir":
            os.rename(src / args[0], src / args[1])
        elif kind == "rmtree":
            shutil.rmtree(src / args[0])
        elif kind == "atomic_save":
            p = src / args[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.parent / f".{p.name}.save{n}"
            tmp.write_bytes(args[1])
            os.rename(tmp, p)
        elif kind == "move_in":
            staged = outside / f"in{n}"
            if args[0] in DIRS:
                (staged / "inner").mkdir(parents=True)
                (staged / "inner" / "f").write_bytes(args[1])
            else:
                staged.write_bytes(args[1])
            (src / args[0]).parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged, src / args[0])
        elif kind == "move_out":
            os.rename(src / args[0], outside / f"out{n}")
        elif kind == "mkdir":  # an empty folder, with a mode
            p = src / args[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.mkdir()
            os.chmod(p, args[1])
        elif kind == "rmdir":  # only if empty (else the OSError below: not applied)
            os.rmdir(src / args[0])
        elif kind == "chmod_dir":
            if (src / args[0]).is_dir() and not (src / args[0]).is_symlink():
                os.chmod(src / args[0], args[1])
        elif kind == "file_to_dir":  # a file replaced by a folder of the same name (with a file in it)
            p = src / args[0]
            p.unlink()
            p.mkdir()
            (p / "f").write_bytes(args[1])
        elif kind == "dir_to_file":  # a folder replaced by a file of the same name
            p = src / args[0]
            shutil.rmtree(p)
            p.write_bytes(args[1])
    except OSError:
        pass  # the operation did not apply to the current tree: fine, like a user's failed command


#: written only by big_step, rarely the same one twice in a row: an interrupted
#: upload of one is neither overtaken by another write nor deleted, so it must
#: resume (or start afresh) after the fault
BIG = ["big0.bin", "big1.bin", "big2.bin"]


def big_step(rng: random.Random, low: int = 11 << 19, high: int = 12 << 20) -> tuple:
    """A write of a file big enough to go up resumably (S3 multipart from a 5 MiB
    threshold, SFTP from 8 MiB): the kind of upload a kill -9 or a server restart
    must interrupt without losing it or leaving parts behind. Half the time the
    file is one of BIG, else one the rest of the workload keeps changing."""
    name = rng.choice(BIG) if rng.random() < 0.5 else rng.choice(NAMES)
    return ("write", name, rng.randbytes(rng.randint(low, high)))


#: what random_step draws besides the file operations, on a target with folders
FOLDER_KINDS = ["mkdir", "rmdir", "chmod_dir", "file_to_dir", "dir_to_file"]


def random_step(rng: random.Random, folder_ops: bool = False) -> tuple:
    """One random operation, in the same shape `apply` takes; with `folder_ops` (a
    target with folders: folders are part of its mirror) the folder operations too.
    Without, the draws are those the torture's fixed seeds were chosen with."""
    kinds = ["write", "write", "append", "delete", "rename", "rename_dir", "rmtree", "atomic_save",
             "move_in", "move_out"]
    kind = rng.choice(kinds + FOLDER_KINDS if folder_ops else kinds)
    data = lambda n: rng.randbytes(rng.randint(0, n))  # noqa: E731
    if kind in ("write", "atomic_save"):
        return (kind, rng.choice(NAMES), data(rng.choice([100, 5000, 200_000])))
    if kind == "append":
        return (kind, rng.choice(NAMES), data(2000) or b"x")
    if kind == "delete":
        return (kind, rng.choice(NAMES))
    if kind == "rename":
        return (kind, rng.choice(NAMES), rng.choice(NAMES))
    if kind == "rename_dir":
        return (kind, rng.choice(DIRS), rng.choice(DIRS))
    if kind == "rmtree":
        return (kind, rng.choice(DIRS))
    if kind == "move_in":
        return (kind, rng.choice(NAMES + DIRS), data(3000))
    if kind in ("mkdir", "chmod_dir"):
        return (kind, rng.choice(DIRS), rng.choice(DIR_MODES))
    if kind == "rmdir":
        return (kind, rng.choice(DIRS))
    if kind == "file_to_dir":
        return (kind, rng.choice(NAMES), data(1000))
    if kind == "dir_to_file":
        return (kind, rng.choice(DIRS), data(1000))
    return (kind, rng.choice(NAMES + DIRS))
