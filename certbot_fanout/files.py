"""Placing files atomically and symlink-safely, with owner and mode set before any byte lands.

Every operation works relative to a file descriptor of the destination directory, and never
follows a symlink at the final path component: a destination directory may be writable by the
(less trusted) service user, who could otherwise plant a symlink or a hard link to redirect a
key write. The directory itself is opened by the kernel and kept only if /proc says the
descriptor is at exactly the path asked for (no symlink led there); otherwise it is opened one
pinned component at a time from ``/``, and a symlink met on the way is followed (by reading
it, never by the kernel) only if it sits in a directory that only root can write: owned by
root (or by the user running certbot-fanout, when that is not root) and writable by neither
its group nor others. Who owns the link itself proves nothing, since a service user can rename
a root-owned link into a directory of its own; a service user who swaps a directory component
for a symlink is refused, not obeyed. A destination whose directory turns out, once opened,
to be inside one of the directories :attr:`Desired.keep_out` names (certbot's own) is refused
as well, so a link on the way cannot lead a write into ``live/``.

POSIX ACLs: a temporary file loses the access ACL it inherits from its directory's default ACL
before its first byte is written, so a placed file is readable by its owner, its group and its
mode's others, and no one else; an existing file with an extended access ACL is a difference
(:attr:`DifferenceKind.ACL`), which the next placement removes.

:func:`snapshot` reads what a path holds now, :func:`compare` says how that differs from what is
:class:`Desired` (each :class:`Difference` typed by a :class:`DifferenceKind`, so no decision
rests on its words), :func:`place` writes it and :func:`restore` puts a snapshot back; the
``*_problem`` functions say whether a service user can reach a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import grp
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from certbot_fanout.errors import PlacementError

MAX_EXISTING_BYTES = 1 << 20
MAX_SYMLINKS = 40  # as the kernel's own limit on a path walk
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_SUFFIX = ".fanout-"
_TEMP_TOKEN = re.compile(r"[0-9a-f]{12}")  # os.urandom(6).hex()
ACCESS_ACL = "system.posix_acl_access"
DEFAULT_ACL = "system.posix_acl_default"
# What the filesystem says when a file has no ACL, or cannot have one.
_NO_ACL = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
# The tags of a named user's and a named group's entry in a POSIX ACL's xattr
# (linux/posix_acl_xattr.h): the entries that grant more than the mode bits say.
_ACL_USER, _ACL_GROUP = 0x02, 0x08


# Why a file is to be placed: there is none at its path (a deploy's text says "new file").
MISSING_REASON = "missing"


class Kind(enum.Enum):
    MISSING = "missing"
    FILE = "file"
    SYMLINK = "symlink"


class DifferenceKind(enum.Enum):
    """What is wrong with what a path holds: decisions (``status``'s severity) rest on this,
    never on the words of a :class:`Difference`'s message."""

    MISSING = "missing"  # nothing at the path
    NOT_A_SYMLINK = "not-a-symlink"  # a regular file where a symlink belongs
    SYMLINK_TARGET = "symlink-target"  # a symlink to somewhere else
    NOT_A_COPY = "not-a-copy"  # a symlink where a copy belongs
    CONTENT = "content"
    OWNER = "owner"
    GROUP = "group"
    MODE = "mode"
    ACL = "acl"  # an extended access ACL: users or groups beyond the mode bits may read it
    UNREADABLE = "unreadable"  # what is at the path cannot be inspected (see snapshot)


@dataclass(frozen=True)
class Difference:
    """One way a path is not what it should be: its kind, and the words that say so."""

    kind: DifferenceKind
    message: str


@dataclass(frozen=True)
class Desired:
    """What a path should be: a regular file with ``data``, or a symlink to ``target``.

    ``keep_out``: absolute directories (certbot's own) the path's directory must not be in
    once opened, whatever links led there; placing it there is refused.

    ``same_content``: whether a file's bytes already hold what ``data`` holds, for content
    that is never the same bytes twice (a PKCS#12 file's random salts); None: the bytes must
    be ``data``. It must not raise for any bytes.
    """

    path: str
    uid: int
    gid: int
    mode: int = 0o600
    data: bytes | None = None
    target: str | None = None
    keep_out: tuple[str, ...] = ()
    same_content: Callable[[bytes], bool] | None = None
    # Rewrite the file's own inode (:func:`place_inplace`) instead of renaming a new one over.
    inplace: bool = False


@dataclass(frozen=True)
class Snapshot:
    """What a path was, kept in memory so that it can be put back exactly."""

    path: str
    kind: Kind
    data: bytes = b""
    target: str = ""
    uid: int = 0
    gid: int = 0
    mode: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    # The named entries of a file's extended access ACL, as getfacl shows them
    # ("user:nobody:r--"); never put back by :func:`restore`.
    acl: tuple[str, ...] = ()
    # Put back into the same inode (:func:`restore_inplace`): it was placed in place.
    inplace: bool = False


@contextlib.contextmanager
def _directory(path: str) -> Iterator[tuple[int, str]]:
    parent, name = os.path.split(path)
    if not name or not os.path.isabs(path):
        raise PlacementError(f"{path}: not an absolute file path")
    dfd = _open_directory(parent or "/", path)
    try:
        yield dfd, name
    finally:
        os.close(dfd)


def _open_directory(directory: str, for_path: str | None = None) -> int:
    """An O_DIRECTORY file descriptor of absolute ``directory``, opened without letting anyone
    but root redirect the walk (see the module's doc). ``for_path`` names the file the
    directory is opened for, in messages.

    Each component is pinned with an ``O_PATH|O_NOFOLLOW`` descriptor before it is looked at,
    so what is checked is what is used: swapping it afterwards changes nothing.

    Raises:
        PlacementError: a component is missing, not a directory, or an untrusted symlink; or
            there are too many symlinks.
    """
    label = for_path or directory
    plain = _open_if_plain(directory)
    if plain is not None:
        return plain
    fd = os.open("/", _DIRECTORY_FLAGS)
    walked: list[str] = []  # the directory opened so far, as followed
    pending = [c for c in directory.split("/") if c not in ("", ".")]
    pending.reverse()  # a stack: the next component is last
    hops = 0
    try:
        while pending:
            component = pending.pop()
            here = "".join(f"/{w}" for w in walked) + f"/{component}"
            try:
                pinned = os.open(component, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise PlacementError(
                    f"{label}: directory {directory} does not exist ({here} is missing); "
                    "create it with the owner and mode the service needs"
                ) from None
            except OSError as e:
                raise PlacementError(f"{label}: cannot open {here}: {e.strerror}") from None
            try:
                st = os.fstat(pinned)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise PlacementError(f"{label}: too many symlinks in {directory}")
                    _trust_symlink(fd, st, here, label)
                    target = os.readlink("", dir_fd=pinned)
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open("/", _DIRECTORY_FLAGS)
                        walked = []
                    pending.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise PlacementError(f"{label}: {here} is not a directory")
                next_fd = os.open(".", _DIRECTORY_FLAGS, dir_fd=pinned)
            except OSError as e:
                raise PlacementError(f"{label}: cannot open {here}: {e.strerror}") from None
            finally:
                os.close(pinned)
            os.close(fd)
            fd = next_fd
            if component == "..":
                del walked[-1:]
            else:
                walked.append(component)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_if_plain(directory: str) -> int | None:
    """The common case, cheaply: let the kernel open ``directory``, then ask where the
    descriptor is. Exactly ``directory``: no symlink led there, and it is pinned now, whatever
    is renamed next. Anywhere else (a symlink on the way, even a trusted one, or a swap
    during the open), or when /proc cannot tell: None, for the careful walk to decide."""
    try:
        fd = os.open(directory, _DIRECTORY_FLAGS)
    except OSError:
        return None  # the walk says why
    try:
        if os.readlink(f"/proc/self/fd/{fd}") == os.path.normpath(directory):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _trust_symlink(dfd: int, link: os.stat_result, link_path: str, label: str) -> None:
    """Refuse a symlink in a directory that someone other than root could write (see the
    module's doc): whoever owns the link, such a user could have put it there."""
    parent = os.fstat(dfd)
    mode = stat.S_IMODE(parent.st_mode)
    trusted = _trusted_owner(parent.st_uid)
    if trusted and not mode & 0o022:
        return
    if trusted:
        why = f"users other than {_user(parent.st_uid)} can write (mode {mode:04o})"
    else:
        why = f"{_user(parent.st_uid)} owns"
    raise PlacementError(
        f"{label}: refusing to follow {link_path}: a symlink owned by {_user(link.st_uid)} in "
        f"{os.path.dirname(link_path) or '/'}, a directory that {why}, so a service user "
        "could have put it there to redirect a root write; write the real directory in the map"
    )


def _trusted_owner(uid: int) -> bool:
    """Root, or the user running certbot-fanout (a non-root run trusts its own files)."""
    return uid in (0, os.geteuid())


def _inside_problem(dfd: int, path: str, keep_out: tuple[str, ...]) -> str | None:
    """Why the directory open as ``dfd`` (for ``path``) must not be written: it is, or is
    below, one of ``keep_out``. Compared by device and inode up the ``..`` chain from the
    pinned descriptor, so no link and no rename can hide it."""
    fences: dict[tuple[int, int], str] = {}
    for directory in keep_out:
        with contextlib.suppress(OSError):
            st = os.stat(directory)
            fences[(st.st_dev, st.st_ino)] = directory
    if not fences:
        return None
    fd = os.dup(dfd)
    try:
        for _ in range(4096):  # deeper than any real path
            st = os.fstat(fd)
            fence = fences.get((st.st_dev, st.st_ino))
            if fence is not None:
                return (
                    f"{path}: its directory, as the symlinks on the way resolve, is inside "
                    f"{fence}: certbot owns {fence} and rewrites it on every renewal; refusing "
                    "to write there (a symlink on the way leads into it: write the real "
                    "directory in the map, or use link: true for a symlink into live/)"
                )
            up = os.open("..", _DIRECTORY_FLAGS, dir_fd=fd)
            above = os.fstat(up)
            os.close(fd)
            fd = up
            if (above.st_dev, above.st_ino) == (st.st_dev, st.st_ino):
                return None  # the root
    finally:
        os.close(fd)
    return None


def remove_leftovers(path: str) -> None:
    """Remove the temporary files that an interrupted run left beside ``path``, whether or not
    ``path`` itself needs placing. Never raises: a directory it cannot open is reported by
    whatever reads or places ``path`` next."""
    with contextlib.suppress(PlacementError, OSError), _directory(path) as (dfd, name):
        _remove_leftovers(dfd, name)


def _remove_leftovers(dfd: int, name: str) -> None:
    """Remove the temporary files that an interrupted run left for ``name`` (never following
    a link: unlink removes the name only)."""
    prefix = f".{name}{_TEMP_SUFFIX}"
    with os.scandir(dfd) as entries:
        stale = [
            e.name
            for e in entries
            if e.name.startswith(prefix) and _TEMP_TOKEN.fullmatch(e.name[len(prefix) :])
        ]
    for leftover in stale:
        with contextlib.suppress(OSError):
            os.unlink(leftover, dir_fd=dfd)


def snapshot(path: str) -> Snapshot:
    """Record what is at ``path`` now, without following a symlink there.

    Raises:
        PlacementError: the path holds something that is neither a file nor a symlink, or a file
            too large to be a certificate, or it cannot be read.
    """
    with _directory(path) as (dfd, name):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return Snapshot(path, Kind.MISSING)
        except OSError as e:
            raise PlacementError(f"{path}: cannot inspect: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            return _snapshot(path, Kind.SYMLINK, st, target=os.readlink(name, dir_fd=dfd))
        if not stat.S_ISREG(st.st_mode):
            raise PlacementError(f"{path}: exists and is not a regular file or symlink; refusing")
        if st.st_size > MAX_EXISTING_BYTES:
            raise PlacementError(
                f"{path}: existing file is {st.st_size} bytes, too large to be a certificate; "
                "refusing to replace it"
            )
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except OSError as e:
            raise PlacementError(f"{path}: cannot read: {e.strerror}") from None
        try:
            data = _read_all(fd, MAX_EXISTING_BYTES + 1)
            acl = _extended_acl(fd, ACCESS_ACL)
        except OSError as e:
            raise PlacementError(f"{path}: cannot read: {e.strerror}") from None
        finally:
            os.close(fd)
        return replace(_snapshot(path, Kind.FILE, st, data=data), acl=acl)


def _snapshot(
    path: str, kind: Kind, st: os.stat_result, data: bytes = b"", target: str = ""
) -> Snapshot:
    return Snapshot(
        path,
        kind,
        data=data,
        target=target,
        uid=st.st_uid,
        gid=st.st_gid,
        mode=stat.S_IMODE(st.st_mode),
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
    )


def _extended_acl(fd_or_path: int | str, name: str) -> tuple[str, ...]:
    """The named entries of the POSIX ACL ``name`` (:data:`ACCESS_ACL` or
    :data:`DEFAULT_ACL`) of a file or directory, as getfacl shows them: ``user:nobody:r--``.
    Empty when it has none, or its filesystem has no ACLs.

    Raises:
        OSError: the ACL cannot be read.
    """
    try:
        raw = os.getxattr(fd_or_path, name)
    except OSError as e:
        if e.errno in _NO_ACL:
            return ()
        raise
    entries = []
    for offset in range(4, len(raw) - 7, 8):  # a 4-byte version, then 8-byte entries
        tag = int.from_bytes(raw[offset : offset + 2], "little")
        perm = int.from_bytes(raw[offset + 2 : offset + 4], "little")
        ident = int.from_bytes(raw[offset + 4 : offset + 8], "little")
        if tag not in (_ACL_USER, _ACL_GROUP):
            continue
        who = f"user:{_user(ident)}" if tag == _ACL_USER else f"group:{_group(ident)}"
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        entries.append(f"{who}:{rwx}")
    return tuple(entries)


def default_acl(directory: str) -> tuple[str, ...]:
    """The named entries of ``directory``'s default ACL, which every file created in it
    inherits as its access ACL (see :func:`_extended_acl`); empty when it has none or
    cannot be read."""
    try:
        return _extended_acl(directory, DEFAULT_ACL)
    except OSError:
        return ()


def _strip_acl(fd: int) -> None:
    """Remove the access ACL a new file inherited from its directory's default ACL, and make
    sure none is left.

    Raises:
        OSError: it could not be removed (or came back).
    """
    try:
        os.removexattr(fd, ACCESS_ACL)
    except OSError as e:
        if e.errno not in _NO_ACL:
            raise
    left = _extended_acl(fd, ACCESS_ACL)
    if left:
        raise OSError(errno.EPERM, f"an access ACL ({', '.join(left)}) is still on it")


def _read_all(fd: int, limit: int) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        chunk = os.read(fd, min(65536, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def compare(
    desired: Desired,
    current: Snapshot,
    *,
    user: Callable[[int], str] | None = None,
    group: Callable[[int], str] | None = None,
) -> list[Difference]:
    """How ``current`` is not ``desired``; empty when nothing needs doing. ``user`` and
    ``group`` name ids in the messages (default: as this host names them; for a file on
    another host, as that host does)."""
    user = user or _user
    group = group or _group
    if current.kind is Kind.MISSING:
        return [Difference(DifferenceKind.MISSING, MISSING_REASON)]
    if desired.target is not None:
        if current.kind is not Kind.SYMLINK:
            return [
                Difference(DifferenceKind.NOT_A_SYMLINK, "a regular file where a symlink belongs")
            ]
        if current.target != desired.target:
            return [
                Difference(DifferenceKind.SYMLINK_TARGET, f"symlink points to {current.target}")
            ]
        return []
    if current.kind is Kind.SYMLINK:
        where = f"a symlink (to {current.target}) where a copy belongs"
        return [Difference(DifferenceKind.NOT_A_COPY, where)]
    found = []
    if not _same_content(desired, current.data):
        found.append(Difference(DifferenceKind.CONTENT, "content differs"))
    if current.uid != desired.uid:
        owner = f"owner {user(current.uid)}, expected {user(desired.uid)}"
        found.append(Difference(DifferenceKind.OWNER, owner))
    if current.gid != desired.gid:
        wrong = f"group {group(current.gid)}, expected {group(desired.gid)}"
        found.append(Difference(DifferenceKind.GROUP, wrong))
    if current.mode != desired.mode:
        mode = f"mode {current.mode:04o}, expected {desired.mode:04o}"
        found.append(Difference(DifferenceKind.MODE, mode))
    if current.acl:
        acl = f"an access ACL also grants {', '.join(current.acl)}"
        found.append(Difference(DifferenceKind.ACL, acl))
    return found


def _same_content(desired: Desired, data: bytes) -> bool:
    if desired.same_content is None:
        return data == desired.data
    return desired.same_content(data)


def differences(desired: Desired, current: Snapshot) -> list[str]:
    """Why ``current`` is not ``desired``, in words (the messages of :func:`compare`)."""
    return [d.message for d in compare(desired, current)]


def place(desired: Desired) -> None:
    """Atomically make ``desired.path`` what ``desired`` says.

    A temporary file is created beside the destination with O_EXCL|O_NOFOLLOW and mode 0600,
    given its owner, stripped of the access ACL its directory's default ACL gave it, given its
    mode, then filled, fsynced, and renamed over the destination; the directory is fsynced
    last. No one but the final owner can read it at any instant.

    Raises:
        PlacementError: any step failed, or the directory is inside ``desired.keep_out``; the
            destination is then unchanged.
    """
    if desired.inplace:
        place_inplace(desired)
        return
    with _directory(desired.path) as (dfd, name):
        try:
            problem = _inside_problem(dfd, desired.path, desired.keep_out)
        except OSError as e:
            where = f"{desired.path}: cannot inspect its directory"
            raise PlacementError(f"{where}: {e.strerror}") from None
        if problem:
            raise PlacementError(problem)
        _remove_leftovers(dfd, name)
        # os.urandom, as secrets.token_hex is (without importing secrets, hmac and hashlib
        # into the agent on every target).
        tmp = f".{name}{_TEMP_SUFFIX}{os.urandom(6).hex()}"
        step = "create a temporary file"
        created = False
        try:
            if desired.target is not None:
                os.symlink(desired.target, tmp, dir_fd=dfd)
                created = True
                step = "set the symlink's owner"
                os.chown(tmp, desired.uid, desired.gid, dir_fd=dfd, follow_symlinks=False)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
                created = True
                try:
                    step = f"set owner {_user(desired.uid)}:{_group(desired.gid)}"
                    os.fchown(fd, desired.uid, desired.gid)
                    step = "remove the ACL inherited from the directory"
                    _strip_acl(fd)
                    step = f"set mode {desired.mode:04o}"
                    os.fchmod(fd, desired.mode)
                    step = "write"
                    view = memoryview(desired.data or b"")
                    while view:
                        view = view[os.write(fd, view) :]
                    step = "fsync"
                    os.fsync(fd)
                finally:
                    os.close(fd)
            step = "rename into place"
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            created = False
            step = "fsync the directory"
            os.fsync(dfd)
        except OSError as e:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
            raise PlacementError(f"{desired.path}: cannot {step}: {e.strerror}") from None


def place_inplace(desired: Desired) -> None:
    """Rewrite the regular file ``desired.path`` in place, keeping its inode: for a file a
    process was given through a single-file bind mount, which an atomic rename would leave
    holding the old inode. Owner, ACL and mode are set first, then the file is truncated,
    written and fsynced. NOT atomic: a reader at that moment can see a part of the file. A
    path with no file is placed as by :func:`place`.

    Raises:
        PlacementError: any step failed (a failure after the truncation leaves a part).
    """
    if desired.target is not None:
        raise PlacementError(f"{desired.path}: a symlink cannot be rewritten in place")
    with _directory(desired.path) as (dfd, name):
        problem = _inside_problem(dfd, desired.path, desired.keep_out)
        if problem:
            raise PlacementError(problem)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            fd = -1
        except OSError as e:
            raise PlacementError(
                f"{desired.path}: cannot open it to rewrite: {e.strerror}"
            ) from None
    if fd < 0:
        place(dataclasses.replace(desired, inplace=False))
        return
    step = "inspect it"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PlacementError(f"{desired.path}: not a regular file, so not rewritten in place")
        step = f"set owner {_user(desired.uid)}:{_group(desired.gid)}"
        os.fchown(fd, desired.uid, desired.gid)
        step = "remove its ACL"
        _strip_acl(fd)
        step = f"set mode {desired.mode:04o}"
        os.fchmod(fd, desired.mode)
        step = "truncate"
        os.ftruncate(fd, 0)
        step = "write"
        view = memoryview(desired.data or b"")
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        step = "fsync"
        os.fsync(fd)
    except OSError as e:
        raise PlacementError(f"{desired.path}: cannot {step} in place: {e.strerror}") from None
    finally:
        os.close(fd)


def restore_inplace(previous: Snapshot) -> None:
    """Put ``previous`` back into the same inode (see :func:`place_inplace`); a path that was
    not a regular file is restored as by :func:`restore`."""
    if previous.kind is not Kind.FILE:
        restore(previous)
        return
    place_inplace(
        Desired(previous.path, previous.uid, previous.gid, previous.mode, data=previous.data)
    )


def restore(previous: Snapshot) -> None:
    """Put ``previous`` back: same bytes, owner, mode and times, or remove what was not there.

    Raises:
        PlacementError: the path could not be restored.
    """
    if previous.inplace and previous.kind is Kind.FILE:
        restore_inplace(previous)
        return
    if previous.kind is Kind.MISSING:
        with _directory(previous.path) as (dfd, name):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise PlacementError(f"{previous.path}: cannot remove: {e.strerror}") from None
        return
    place(
        Desired(
            path=previous.path,
            uid=previous.uid,
            gid=previous.gid,
            mode=previous.mode,
            data=previous.data if previous.kind is Kind.FILE else None,
            target=previous.target if previous.kind is Kind.SYMLINK else None,
        )
    )
    with _directory(previous.path) as (dfd, name), contextlib.suppress(OSError):
        os.utime(
            name,
            ns=(previous.atime_ns, previous.mtime_ns),
            dir_fd=dfd,
            follow_symlinks=False,
        )


def reader_problem(path: str, uid: int, gid: int) -> str | None:
    """Why user ``uid`` (with group ``gid`` and its supplementary groups) cannot read ``path``.

    Checks search permission on every directory along the path and along the symlink's
    resolved target, and read permission on the file itself. Returns None when it can.
    """
    if uid == 0:
        return None
    gids = _groups_of(uid) | {gid}
    real = os.path.realpath(path)
    for candidate in dict.fromkeys((path, real)):
        problem = _enter_problem(os.path.dirname(candidate), uid, gids)
        if problem:
            return problem
    try:
        st = os.stat(real)
    except OSError as e:
        return f"{real}: {e.strerror}"
    if not _allowed(st, uid, gids, 0o4):
        return f"{_user(uid)} cannot read {real} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def enter_problem(directory: str, uid: int, gid: int) -> str | None:
    """Why user ``uid`` cannot reach files in ``directory`` (search permission along it)."""
    if uid == 0:
        return None
    return _enter_problem(directory, uid, _groups_of(uid) | {gid})


def _enter_problem(directory: str, uid: int, gids: set[int]) -> str | None:
    prefix = ""
    for part in directory.split("/")[1:]:
        if not part:
            continue
        prefix += "/" + part
        try:
            st = os.stat(prefix)
        except OSError as e:
            return f"cannot inspect {prefix}: {e.strerror}"
        if not _allowed(st, uid, gids, 0o1):
            mode = stat.S_IMODE(st.st_mode)
            return f"{_user(uid)} cannot enter {prefix} (mode {mode:04o}, owner {_user(st.st_uid)})"
    return None


def _allowed(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    mode = st.st_mode
    if st.st_uid == uid:
        return bool(mode & (bit << 6))
    if st.st_gid in gids:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def _groups_of(uid: int) -> set[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(entry.pw_name, entry.pw_gid))


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
