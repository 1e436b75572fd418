"""Writing artefacts safely and fingerprinting them.

Every file ffx produces goes through `atomic_output`: it is written under a temporary name in the
destination folder and renamed into place only when complete, so an error or Ctrl-C never
leaves a partial model, engine or sidecar behind.
"""

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

from ffx.errors import FfxError


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:  # read-only folder, a file where a folder should be, disk full, ...
        raise FfxError(f"{path}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; give the artefact the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise FfxError(f"{path}: {e.strerror or 'no space left'} while writing it; free space and run again "
                           "(nothing was written)") from None
        raise


@contextlib.contextmanager
def written_together(folder):
    """Hold an exclusive lock on `folder` while files that belong together are written there (a
    model and its manifest, an engine and its sidecar): two runs writing the same outputs at once
    then leave one run's set, never one run's model beside the other's manifest. The lock is
    flock on the folder itself, so no lock file is left behind."""
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise FfxError(f"{folder}: cannot write there ({e.strerror or e})") from None
    try:
        with contextlib.suppress(OSError):  # a file system without locks (some network mounts): write unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_overwriting_inputs(output, inputs):
    """FfxError when writing `output` would replace one of `inputs` (paths or None):
    `ffx export --checkpoint m.pth -o m.pth` must not destroy the checkpoint."""
    output = Path(output)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if source.exists() and (source.resolve() == output.resolve() or (output.exists() and os.path.samefile(source, output))):
            raise FfxError(f"{output}: is also an input of this command; choose another output path")


def current_umask():
    """The process umask (read by setting and restoring it): the mode bits new files must not get."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data):
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path, obj):
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
