"""Writing artefacts safely and fingerprinting them.

Every file ffx produces goes through `atomic_output` (or `atomic_outputs` for files that belong
together): it is written under a temporary name in the destination folder and renamed into place
only when complete, so an error or Ctrl-C never leaves a partial model, engine or sidecar behind.

What may be written over is decided here, once for every writer (`check_output_path`): only a
regular file or nothing. A device, FIFO, socket or folder at an output path is refused (renaming
over `/dev/null` would replace the device), and so is any input of the running command, by
inode, so hard links and symlinks count: commands record their inputs with `command_inputs`
and `add_command_input` (the CLI does it for every path argument it reads). Commands check their
outputs before the long work; the check is repeated right before each rename.

Temporary names are `.NAME.XXXXXXXX.partial` beside the output, locked (flock) while their writer
lives: one left by a run that was killed (kill -9) is removed by the next write of the same
output. Scratch folders in TMPDIR (`scratch_folder`) are owned and cleaned up the same way.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ffx.errors import FfxError


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096
PARTIAL_SUFFIX = ".partial"
_RANDOM_CHARS = 8  # tempfile's random part: [a-z0-9_]{8}
# A temporary left behind is removed only when no process holds its lock and it is at least this
# old: the lock is taken right after the file is created, so a younger unlocked one may be a
# writer that has not locked it yet.
STALE_SECONDS = 10.0

_command_inputs = None  # [path]: the running command's inputs, while `command_inputs` is active


# -- what may be written --------------------------------------------------------------------------


@contextlib.contextmanager
def command_inputs(*paths):
    """While the block runs, every output check refuses `paths` (and those added with
    `add_command_input`): the files one command reads must survive it."""
    global _command_inputs
    previous = _command_inputs
    _command_inputs = [*(previous or []), *(p for p in paths if p is not None)]
    try:
        yield
    finally:
        _command_inputs = previous


def add_command_input(path):
    """Record `path` as an input of the running command (no effect outside `command_inputs`)."""
    if _command_inputs is not None and path is not None:
        _command_inputs.append(path)


def file_kind(mode):
    """'directory', 'character device', ... for a stat mode that is not a regular file."""
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def output_target(path):
    """The file written for output `path`: `path` itself, or the file a symlink there points to
    (the link is kept). FfxError unless that is a regular file or nothing: a device, FIFO, socket
    or folder is never replaced."""
    path = Path(path)
    name = path.name
    if name in ("", ".", ".."):
        raise FfxError(f"{path}: not a file name; give the output file's name")
    if len(os.fsencode(name)) > NAME_MAX:
        raise FfxError(f"{path}: the file name is {len(os.fsencode(name))} bytes long; file systems allow {NAME_MAX}")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (the folder check names a file in the way)
        return target
    except OSError as e:
        raise FfxError(f"{path}: cannot write there ({_reason(e)})") from None
    if stat.S_ISDIR(mode):
        raise FfxError(f"{path}: is a directory; give the output file's name")
    if not stat.S_ISREG(mode):
        raise FfxError(f"{path}: is a {file_kind(mode)}, not a regular file; ffx writes its outputs only to "
                       "regular files (choose another output path)")
    return target


def check_output_path(path, inputs=()):
    """FfxError now, before any long work, unless `path` can be written as an output: absent or a
    regular file (see `output_target`), none of `inputs` or of the running command's inputs (the
    same file by inode: hard links and symlinks count), not an image file inside a data folder
    the command reads, a name short enough (with its temporary name), in a folder that exists or
    can be made and is writable. Returns the file that will be written."""
    from ffx.images import IMAGE_EXTENSIONS

    target = output_target(path)
    sources = [Path(p) for p in (*inputs, *(_command_inputs or ())) if p is not None]
    for source in sources:
        if _same_file(source, target):
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise FfxError(f"{path}: is also an input of this command{same}; choose another output path")
    if target.suffix.lower() in IMAGE_EXTENSIONS:  # it would join the images a data folder holds
        for source in sources:
            if source.is_dir() and _inside(target, source):
                raise FfxError(f"{path}: is inside {source}, which this command reads images from; an image written "
                               "there would join (or replace one of) them: write it elsewhere")
    _check_folder_writable(path, target.parent)
    return target


def refuse_overwriting_inputs(output, inputs):
    """FfxError when writing `output` would replace one of `inputs` (paths or None):
    `ffx export --checkpoint m.pth -o m.pth` must not destroy the checkpoint."""
    check_output_path(output, inputs)


def _same_file(source, target):
    try:
        return os.path.samefile(source, target)
    except (OSError, ValueError):  # one of them does not exist: nothing to replace
        return False


def _inside(path, folder):
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def _check_folder_writable(path, folder):
    """FfxError unless files can be created in `folder` (made if missing)."""
    folder = Path(os.path.abspath(folder))
    longest = len(os.fsencode(str(folder))) + 1 + NAME_MAX
    if longest > PATH_MAX - 1:
        raise FfxError(f"{path}: the path is too long ({len(os.fsencode(str(folder)))} bytes before the file name)")
    existing, missing = folder, []
    while True:
        try:
            mode = os.stat(existing).st_mode
            break
        except FileNotFoundError:
            missing.append(existing.name)
            existing = existing.parent
        except OSError as e:
            raise FfxError(f"{path}: cannot write there ({_reason(e)})") from None
    if not stat.S_ISDIR(mode):
        raise FfxError(f"{path}: cannot write there ({existing} is a {_kind_or_file(mode)}, not a folder)")
    for name in missing:
        if len(os.fsencode(name)) > NAME_MAX:
            raise FfxError(f"{path}: the folder name {name[:40]}... is longer than {NAME_MAX} bytes")
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        raise FfxError(f"{path}: cannot write there ({'read-only file system' if read_only else 'permission denied'})")


def _open_folder(folder):
    """A descriptor of `folder` (to lock it); OSError, never a wait, when it is not a folder."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)


def _kind_or_file(mode):
    return "file" if stat.S_ISREG(mode) else file_kind(mode)


def _reason(error):
    return error.strerror or str(error)


# -- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths):
    """Yield a temporary path for each of `paths` (files that belong together); when the block
    succeeds every target is checked again and each temporary renamed onto its path, in order.
    After an error nothing is renamed, and no temporary file or folder made here is left."""
    paths = [Path(p) for p in paths]
    targets = [check_output_path(p) for p in paths]
    created, temporaries = [], []
    try:
        for path, target in zip(paths, targets):
            created += _make_folders(path, target.parent)
            remove_stale_partials(target.parent, target.name)
            temporaries.append(_locked_temporary(path, target))
        yield [Path(tmp) for _fd, tmp in temporaries]
        mode = 0o666 & ~current_umask()  # mkstemp creates files 0600; give the mode a plain open() would
        for (_fd, tmp), path in zip(temporaries, paths):
            os.chmod(tmp, mode)
        for path in paths:  # again, right before renaming: the path may have become something else
            output_target(path)
        for (_fd, tmp), target in zip(temporaries, targets):
            os.replace(tmp, target)
    except BaseException as e:
        for _fd, tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _remove_folders(created)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            names = " / ".join(str(p) for p in paths)
            raise FfxError(f"{names}: {e.strerror or 'no space left'} while writing it; free space and run again "
                           "(nothing was written)") from None
        raise
    finally:
        for fd, _tmp in temporaries:
            os.close(fd)


def _locked_temporary(path, target):
    """(fd, name) of a new `.NAME.XXXXXXXX.partial` beside `target`, locked while the fd is open."""
    import fcntl

    try:
        fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(target.name), suffix=PARTIAL_SUFFIX, dir=target.parent)
    except OSError as e:  # read-only folder, disk full, ...
        raise FfxError(f"{path}: cannot write there ({_reason(e)})") from None
    with contextlib.suppress(OSError):  # a file system without locks: stale ones are then kept
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, tmp


def _partial_prefix(name):
    """`.NAME.`, NAME cut (at a character boundary) so that the temporary name fits in NAME_MAX."""
    room = NAME_MAX - len("..") - _RANDOM_CHARS - len(PARTIAL_SUFFIX)
    raw = os.fsencode(name)
    if len(raw) > room:
        raw = raw[:room]
        while raw and raw[-1] & 0xC0 == 0x80:  # UTF-8 continuation bytes of a cut character
            raw = raw[:-1]
        if raw and raw[-1] >= 0xC0:  # and its lead byte
            raw = raw[:-1]
    return f".{os.fsdecode(raw)}."


def _make_folders(path, folder):
    """Create `folder` and its missing parents; the folders created, outermost first."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            _remove_folders(created)
            raise FfxError(f"{path}: cannot write there ({_reason(e)})") from None
        created.append(folder)
    return created


def _remove_folders(created):
    """Remove the folders `_make_folders` created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def written_together(folder):
    """Hold an exclusive lock on `folder` while files that belong together are written there (a
    model and its manifest, an engine and its sidecar): two runs writing the same outputs at once
    then leave one run's set, never one run's model beside the other's manifest. The lock is
    flock on the folder itself, so no lock file is left behind."""
    import fcntl

    folder = Path(folder)
    _check_folder_writable(folder, folder)  # a FIFO there would block the open below
    created = _make_folders(folder, folder)
    try:
        fd = _open_folder(folder)
    except OSError as e:
        _remove_folders(created)
        raise FfxError(f"{folder}: cannot write there ({_reason(e)})") from None
    try:
        with contextlib.suppress(OSError):  # a file system without locks (some network mounts): write unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    except BaseException:
        _remove_folders(created)
        raise
    finally:
        os.close(fd)  # releases the lock


def _refuse_existing_folder(target):
    """FfxError when something is at `target`, or when `target` cannot be a name there (too long)."""
    try:
        os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return  # free (a missing parent is made, a file as parent refused, by what follows)
    except OSError as e:
        raise FfxError(f"{target}: cannot write there ({_reason(e)})") from None
    raise FfxError(f"{target}: already exists; choose another name or remove it")


@contextlib.contextmanager
def partial_folder(target):
    """Yield a new, locked temporary folder `.NAME.XXXXXXXX.partial` beside folder `target`
    (which must not exist); renamed onto `target` when the block succeeds, removed otherwise.
    One left by a killed run is removed by the next."""
    import fcntl

    target = Path(target)
    _refuse_existing_folder(target)
    created = _make_folders(target, target.parent)
    remove_stale_partials(target.parent, target.name)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(target.name), suffix=PARTIAL_SUFFIX, dir=target.parent))
        fd = _open_folder(staging)
    except OSError as e:
        _remove_folders(created)
        raise FfxError(f"{target.parent}: cannot write there ({_reason(e)})") from None
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        _refuse_existing_folder(target)  # made by someone else meanwhile
        os.rename(staging, target)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_folders(created)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise FfxError(f"{target}: {e.strerror or 'no space left'} while writing it; free space and run again "
                           "(nothing was written)") from None
        raise
    finally:
        os.close(fd)


# -- what a killed run left behind ----------------------------------------------------------------


def remove_stale_partials(folder, name):
    """Remove `.NAME.XXXXXXXX.partial` files and folders in `folder` that a killed run left: ours
    by name, owner and mode (created 0600 / 0700 and given their final mode only when renamed, so
    a user's file of that name, 0644, stays), unlocked (their writer is gone) and older than
    STALE_SECONDS."""
    pattern = re.compile(re.escape(_partial_prefix(name)) + f"[a-z0-9_]{{{_RANDOM_CHARS}}}" + re.escape(PARTIAL_SUFFIX))
    _remove_stale(folder, pattern)


def _remove_stale(folder, pattern):
    try:
        entries = [entry for entry in os.scandir(folder) if pattern.fullmatch(entry.name)]
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            ours = ((stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600)
                    or (stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700))
            if (not ours or info.st_uid != os.geteuid() or time.time() - info.st_mtime < STALE_SECONDS
                    or _in_use(entry.path)):
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _in_use(path):
    """True when a live process holds the lock of `path` (or locks cannot tell)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def scratch_folder(prefix):
    """A private folder in TMPDIR (`PREFIXxxxxxxxx`) for files ffx hands to other libraries
    (onnxruntime's quantizer writes its own temporaries beside the model it is given): removed
    afterwards, one left by a killed run removed by the next, and a full TMPDIR is one line."""
    import fcntl

    base = tempfile.gettempdir()
    _remove_stale(base, re.compile(re.escape(prefix) + f"[a-z0-9_]{{{_RANDOM_CHARS}}}"))
    try:
        folder = tempfile.mkdtemp(prefix=prefix, dir=base)
        fd = _open_folder(folder)
    except OSError as e:
        raise FfxError(f"{base} (the temporary folder, TMPDIR): cannot write there ({_reason(e)})") from None
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield Path(folder)
    except Exception as e:
        if (isinstance(e, OSError) and e.errno in _NO_SPACE) or _full(folder):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "no space left"
            raise FfxError(f"{base} (the temporary folder, TMPDIR): {reason} while writing temporary files there; "
                           "free space or point TMPDIR elsewhere") from None
        raise
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


def _full(folder):
    """True when the file system of `folder` has no block or inode left for ordinary users."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    return info.f_bavail == 0 or (info.f_files > 0 and info.f_favail == 0)


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
