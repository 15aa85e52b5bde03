"""Who may read the spool: private to its user (directories 0700, files 0600) unless it is
shared on purpose, a directory with the setgid bit whose group may enter, read and write
it (02770). There files are 0660, and what is made inside takes the directory's group
(the kernel's setgid rule), so the application's user writes and the agent's user reads
(docs/spool-format.md, "Sharing the spool"). Only :func:`spool_dir` with a group makes
one; every mode is set explicitly, so the umask cannot take the group's bits.

The spool's writer (``_spool``, ``_sinks``) creates its folders with :func:`private_dir`
and its files with :func:`open_private`, which follow the directory they are in; the
setting ``spool_shared_group`` reaches the directory through :func:`spool_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SHARED_DIR_MODE = 0o2770
SHARED_FILE_MODE = 0o660
_SETGID = 0o2000


def is_shared(mode: int) -> bool:
    """Whether a directory's mode marks it shared on purpose: setgid, and group ``rwx``."""
    return bool(mode & _SETGID) and mode & 0o070 == 0o070


def group_id(group: str | int) -> int:
    """The id of a group given by name or number. Raises ``KeyError`` if no group has that name."""
    if isinstance(group, int):
        return group
    if group.isascii() and group.isdigit():
        return int(group)
    import grp  # POSIX only; imported where a shared spool is asked for

    return grp.getgrnam(group).gr_gid


#: Missing parents of a shared spool: the group may pass and look, not write. (Not shared
#: on purpose, so the agent's state beside the spool stays private.)
SHARED_PARENT_MODE = 0o750


def _existing_ancestor(p: Path) -> Path:
    q = p.parent
    while not q.is_dir() and q != q.parent:
        q = q.parent
    return q


def _make_dirs(p: Path, mode: int, parent_mode: int, gid: int = -1) -> None:
    """Create ``p`` with exactly ``mode`` and its missing parents with ``parent_mode`` (both
    of group ``gid`` if given), whatever the umask."""
    missing: list[Path] = []
    q = p
    while not q.is_dir() and q != q.parent:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        m = mode if d == p else parent_mode
        try:
            d.mkdir(mode=m & 0o777)
        except FileExistsError:
            if d.is_dir():
                continue  # made by another process just now; it sets its mode
            raise
        if gid >= 0:
            os.chown(d, -1, gid)  # before chmod: a change of group may clear the setgid bit
        os.chmod(d, m)


def private_dir(path: str | Path) -> Path:
    """Create ``path`` if needed, mode 0700, and tighten it if it is ours and too open.

    Inside a directory shared on purpose it is shared like it (a spool's ``rejected/``),
    and one shared on purpose is left so, only others losing their access. Missing parents
    below a private directory are private (the HTTP receiver's spools in the agent's state),
    elsewhere they are made as ``mkdir -p`` makes them.
    """
    p = Path(path)
    if not p.is_dir():
        above = _existing_ancestor(p).stat().st_mode
        if is_shared(above):
            _make_dirs(p, SHARED_DIR_MODE, SHARED_DIR_MODE)
        elif above & 0o077 == 0:
            _make_dirs(p, PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            _make_dirs(p, PRIVATE_DIR_MODE, PRIVATE_DIR_MODE)
    st = p.stat()
    if st.st_uid == os.getuid():
        if is_shared(st.st_mode):
            if st.st_mode & 0o007:
                p.chmod(st.st_mode & 0o7770)
        elif st.st_mode & 0o077:
            p.chmod(PRIVATE_DIR_MODE)
    return p


def spool_dir(path: str | Path, group: str | int | None = None) -> Path:
    """Make ``path`` ready to be a spool directory and return it.

    Without ``group``, :func:`private_dir`. With one (a name or an id), the directory is
    shared with that group: created 02770 of that group (missing parents 0750 of it), or
    made so if it exists and is ours. One that is not ours is left as its owner set it.
    Raises ``KeyError`` for an unknown group, ``OSError`` if the directory cannot be made
    or changed (for instance to a group this user is not a member of).
    """
    if group is None:
        return private_dir(path)
    gid = group_id(group)
    p = Path(path)
    if not p.is_dir():
        _make_dirs(p, SHARED_DIR_MODE, SHARED_PARENT_MODE, gid)
    st = p.stat()
    if st.st_uid == os.getuid() and (st.st_gid != gid or st.st_mode & 0o7777 != SHARED_DIR_MODE):
        if st.st_gid != gid:
            os.chown(p, -1, gid)
        p.chmod(SHARED_DIR_MODE)
    return p


def spool_file_mode(directory: str | Path) -> int:
    """The mode of a new file in ``directory``: 0660 if it is shared on purpose, else 0600."""
    return SHARED_FILE_MODE if is_shared(os.stat(directory).st_mode) else PRIVATE_FILE_MODE


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND) -> int:
    """Open a spool file readable by its owner only (0600), or also by the group (0660)
    in a directory shared on purpose, whatever the umask."""
    mode = spool_file_mode(path.parent)
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    if mode != PRIVATE_FILE_MODE:
        try:
            st = os.fstat(fd)
            if st.st_uid == os.getuid() and st.st_mode & 0o777 != mode:
                os.fchmod(fd, mode)  # the umask may have taken the group's bits
        except OSError:
            os.close(fd)
            raise
    return fd
