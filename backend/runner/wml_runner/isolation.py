"""The training command apart from its runner: a user of its own, and its own view of the disk.

The runner is made non-dumpable first (``harden_runner``): no process of its uid can read its
memory or environment through ``/proc`` (on Kubernetes the pod's command shares its uid).

On the local executor the runner is root and leases an unprivileged user for its run
(``wml-run-<n>``, made with ``useradd`` on first need; a lock file per user makes the lease
exclusive among every runner of the host). It hands the run's folders to that user and starts
the command as it (``Sandbox``): no supplementary groups, umask 077, no new privileges, killed
if the runner dies, and, where the interpreter or the run's folder lie under a folder others
cannot pass (``/root``, a 0700 ``$WML_HOME``), in a mount namespace of its own in which a tmpfs
covers that folder and shows only what the command needs, and ``/proc`` is a procfs of its own
that shows only the user's own processes (``hidepid=invisible``: not the runner, not other runs,
their command lines included). When the command has ended every
process of the user is killed (``kill(-1)`` as the user: forking or leaving the process group
escapes nothing) and the run's folders are taken back (``take_back``) before the runner reads
them as root; while it runs, the runner reads its files without following links (``open_inside``).
The command enters its sandbox through ``wml-enter`` (``wml_runner.enter``) where the executor
built it, else through a fork of the runner that runs ``Sandbox.preexec``: the same steps.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

#: Set to ``POOL`` by the executor: the runner runs the command as a user it leases for the run
#: (unset: as itself).
RUN_USER_ENV, POOL = "WML_RUN_USER", "pool"
#: Names of the leased users: wml-run-0, wml-run-1, ...
USER_PREFIX = "wml-run-"
#: Most leased users (runs isolated at once on one host).
MOST_USERS = 1000
#: Where the leases' lock files are (root's alone).
LEASE_DIR = Path("/run/wml-run-users")
#: World-writable folders cleared of a leased user's files when its run ends.
SHARED_TMP = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
#: Entries of those a run's end looks through itself for what its user left (no more: a host's
#: /tmp may hold thousands); past them, a child of its own looks (``clear_shared_tmp_later``).
QUICK_LOOK_ENTRIES = 200
#: Seconds to wait for a killed user's processes to be gone.
KILL_WAIT_S = 30.0

_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
_CLONE_NEWNS = 0x20000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
#: The options of a run's own ``/proc``: only processes it may ptrace (its user's) are there.
#: ``invisible`` is understood only by kernels (5.8+) whose procfs mounts are instances of their
#: own; an older one refuses it rather than change the host's ``/proc``.
PROC_OPTIONS = b"hidepid=invisible"
#: The options of the tmpfs that covers a folder the command may not see whole.
COVER_OPTIONS = b"mode=0755,size=1m"
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class RunUser:
    """The unprivileged user a run's command runs as."""

    name: str
    uid: int
    gid: int


def _check(result: int, what: str) -> None:
    """Raise the C library's error when ``result`` says a call failed."""
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl")


def _mount(source: bytes, target: bytes, kind: Optional[bytes], flags: int, data: Optional[bytes] = None) -> None:
    _check(_libc.mount(source, target, kind, ctypes.c_ulong(flags), data), f"mount {target.decode()}")


def harden_runner() -> None:
    """Make this process non-dumpable (its memory and environment unreadable through ``/proc``
    by its own uid) and the reaper of the orphans of what it starts."""
    _prctl(_PR_SET_DUMPABLE, 0)
    become_subreaper()


def become_subreaper() -> None:
    """Make this process the parent of the orphans of what it starts (and reap them as they end)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def take_token(env=os.environ) -> Optional[str]:
    """The runner's token, removed from ``env``: ``WML_RUNNER_TOKEN``, or the file
    ``WML_RUNNER_TOKEN_FILE`` names (deleted when it can be)."""
    token = env.pop("WML_RUNNER_TOKEN", None)
    path = env.pop("WML_RUNNER_TOKEN_FILE", None)
    if token or not path:
        return token
    token = Path(path).read_text().strip()
    try:
        os.unlink(path)
    except OSError:
        pass  # a read-only mount (a Kubernetes Secret)
    return token


# -- leased users --------------------------------------------------------------------------------
#: What a lease's lock file says when its user was given back with nothing running and nothing
#: left in the shared folders (``lease_left_clean``); anything else (its runner died, a new
#: user): it is cleaned up when leased.
LEFT_CLEAN, IN_USE = b"clean\n", b"inuse\n"  # the same length: each replaces the other in place


def lease_user() -> tuple[RunUser, int]:
    """A user no other run of this host holds, with nothing of it left running, and the lock
    file that holds it (held until it is closed, or this process ends)."""
    LEASE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in range(MOST_USERS):
        name = f"{USER_PREFIX}{n}"
        fd = os.open(LEASE_DIR / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        user = _ensure_user(name)
        if os.pread(fd, len(LEFT_CLEAN), 0) != LEFT_CLEAN:
            kill_user(user)  # what a runner that died left running, and in /tmp
            clear_shared_tmp(user)
        lease_in_use(fd)
        return user, fd
    raise RuntimeError(f"all {MOST_USERS} run users ({USER_PREFIX}*) are in use on this host")


def lease_in_use(fd: int) -> None:
    """Note in a lease's lock file (``fd``) that its user may run something: until it is given
    back clean, the next lease cleans up after it."""
    _note_lease(fd, IN_USE)


def lease_left_clean(fd: int) -> None:
    """Note in a lease's lock file (``fd``) that its user runs nothing and left nothing in the
    shared folders (``kill_user`` and ``clear_shared_tmp`` done since it last ran anything): the
    next lease need not look."""
    _note_lease(fd, LEFT_CLEAN)


def _note_lease(fd: int, text: bytes) -> None:
    os.pwrite(fd, text, 0)


def _ensure_user(name: str) -> RunUser:
    """The user ``name``, made (a system user: no home, no login) if it does not exist."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _useradd(name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise RuntimeError(f"run user {name} has uid or gid 0: it would be root")
    return RunUser(name, entry.pw_uid, entry.pw_gid)


def _useradd(name: str) -> None:
    """``useradd`` a system user, retrying while another one holds the password file's lock."""
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
    args = ["useradd", "--system", "--no-create-home", "--user-group", "--home-dir", "/nonexistent",
            "--shell", shell, name]
    for _ in range(50):
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode in (0, 9):  # 9: it exists (made meanwhile)
            return
        if done.returncode not in (1, 10):  # 1, 10: the password or group file is locked
            break
        time.sleep(0.1)
    raise RuntimeError(f"useradd {name} failed: {done.stderr.strip() or done.returncode}")


def kill_user(user: RunUser) -> None:
    """Kill every process of ``user`` at once (``kill(-1)`` as that user) and wait until none is left."""
    deadline = time.monotonic() + KILL_WAIT_S
    while _pids_of(user.uid):
        _kill_all_as(user)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {user.name} still run {KILL_WAIT_S:g} s after SIGKILL")
        time.sleep(0.02)


def _kill_all_as(user: RunUser) -> None:
    """SIGKILL every process ``user`` may signal, from a child that is that user."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _pids_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _real_uid_alive(f"/proc/{name}") == uid]


_STATE_UID = re.compile(rb"^State:\s*(\S).*?^Uid:\s*(\d+)", re.MULTILINE | re.DOTALL)
#: Enough of ``/proc/<pid>/status`` to hold its ``Uid`` line (the 9th, after a name of 15 characters at most).
STATUS_HEAD_BYTES = 1024


def _real_uid_alive(proc_dir: str) -> Optional[int]:
    """The real uid of the process in ``/proc/<pid>``; None when it is gone or a zombie."""
    try:  # (unbuffered: the scan of every process at each run's end is a third faster)
        fd = os.open(f"{proc_dir}/status", os.O_RDONLY)
        try:
            found = _STATE_UID.search(os.read(fd, STATUS_HEAD_BYTES))
        finally:
            os.close(fd)
    except OSError:
        return None
    if found is None or found.group(1) == b"Z":
        return None
    return int(found.group(2))


def clear_shared_tmp(user: RunUser) -> None:
    """Delete what ``user`` left in the host's world-writable folders (the next run of the user
    may be another account's)."""
    for entry, info in _shared_entries(user.uid):
        if info.st_uid == user.uid:
            try:
                shutil.rmtree(entry.path) if stat.S_ISDIR(info.st_mode) else os.unlink(entry.path)
            except OSError:
                pass


def clear_shared_tmp_later(user: RunUser, lease: int) -> None:
    """``clear_shared_tmp`` in a child process that holds the user's lease (``lease``, its lock
    file) until it is done, and then notes it clean: this process, whose exit ends its run, need
    not wait, and the user is not leased again before. (A child orphaned so is reaped by the
    local executor's fork server, a subreaper: ``wml_runner.preload``.) Where those folders hold
    few entries and none is the user's (the usual case), the lease is noted clean at once."""
    looked = list(islice(_shared_entries(user.uid), QUICK_LOOK_ENTRIES + 1))
    if len(looked) <= QUICK_LOOK_ENTRIES and all(info.st_uid != user.uid for _, info in looked):
        lease_left_clean(lease)
        return
    if os.fork() == 0:
        try:
            clear_shared_tmp(user)
            lease_left_clean(lease)
        finally:
            os._exit(0)


def _shared_entries(uid: int) -> Iterator[tuple[os.DirEntry, os.stat_result]]:
    """Each entry, with its ``lstat``, where ``uid`` could have made something: in the host's
    world-writable folders, and in the world-writable folders in them that it does not own."""
    for top in SHARED_TMP:
        yield from _entries(top, uid)


def _entries(folder: Path, uid: int) -> Iterator[tuple[os.DirEntry, os.stat_result]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        yield entry, info
        if info.st_uid != uid and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
            yield from _entries(Path(entry.path), uid)


# -- the run's folders ------------------------------------------------------------------------
def hand_over(root: Path, folders: list[Path], user: RunUser) -> None:
    """Give ``user`` the run's ``folders`` (and what is in them); ``root``, above them, stays the
    runner's (0711: the user may pass through it, not list it or add to it)."""
    os.chown(root, os.geteuid(), os.getegid())
    os.chmod(root, 0o711)
    for folder in folders:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(folder.stat().st_mode) != 0o700:  # (looked at first: a change of mode is a write)
            folder.chmod(0o700)
        _chown_tree(folder, user.uid, user.gid)


def take_back(root: Path, user: RunUser) -> None:
    """Make everything under ``root`` the runner's again (``root`` 0700 again), once ``user`` runs
    nothing: links, FIFOs, sockets and devices are deleted, and files another user owns that are
    linked from elsewhere too (nothing there can lead the runner outside ``root``)."""
    mine = os.geteuid(), os.getegid()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            alien = stat.S_ISREG(info.st_mode) and info.st_nlink > 1 and info.st_uid != user.uid
            if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)) or alien:
                os.unlink(path)
                if name in dirs:  # a link to a folder: os.walk would not enter it anyway
                    dirs.remove(name)
            elif (info.st_uid, info.st_gid) != mine:  # (nothing of the user runs: it stays so until then)
                os.chown(path, *mine, follow_symlinks=False)
    os.chown(root, *mine, follow_symlinks=False)
    os.chmod(root, 0o700)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """``chown -hR``: links themselves, never what they point to."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def open_inside(root: Path, path: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """Open ``path``, under ``root``, following no link below ``root`` (a folder the run's user
    owns may hold links to anything the runner could read); only a regular file."""
    parts = Path(path).relative_to(root).parts
    if not parts or ".." in parts:
        raise OSError(f"{path} is not a file under {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        opened = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=fd)
    finally:
        os.close(fd)
    return _regular(opened, path)


def open_run_file(path: Path, root: Optional[Path], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """Open a file the command writes: under ``root`` following no link (``open_inside``) when
    the command is another user, else as it is; only a regular file (never a FIFO that blocks)."""
    if root is not None:
        return open_inside(root, path, flags, mode)
    return _regular(os.open(path, flags | os.O_NONBLOCK, mode), path)


def read_run_file(path: Path, root: Optional[Path], offset: int = 0, limit: int = -1) -> bytes:
    """Up to ``limit`` bytes (-1: all) of a file the command writes, from ``offset`` (``open_run_file``)."""
    with os.fdopen(open_run_file(path, root), "rb") as f:
        f.seek(offset)
        return f.read(limit)


def _regular(fd: int, path: Path) -> int:
    """``fd`` if it is a regular file's; else closed, and an error."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


# -- starting the command ---------------------------------------------------------------------
@dataclass(frozen=True)
class Sandbox:
    """How a command is started as ``user``, shown ``paths`` (what it needs of the disk): by
    ``helper`` (``wml_runner.enter``), else by a fork that runs ``preexec``; the same steps."""

    user: RunUser
    paths: tuple[Path, ...]
    helper: Optional[Path] = None

    def popen(self, argv: list[str], env: Mapping[str, str], cwd: Path, **popen: Any) -> subprocess.Popen:
        """Start ``argv`` with ``env`` in ``cwd`` in this sandbox (``popen``: Popen's other arguments)."""
        if self.helper is None:
            return subprocess.Popen(argv, env=env, cwd=cwd, preexec_fn=self.preexec(cwd), **popen)
        program = shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if program is None:  # as Popen says it
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        options = ["-n", self.user.name, "-u", str(self.user.uid), "-g", str(self.user.gid), "-p", str(os.getpid()),
                   "-d", str(cwd), "-o", PROC_OPTIONS.decode(), "-m", COVER_OPTIONS.decode()]
        for folder, paths in covered(self.paths, self.user).items():
            options += ["-c", str(folder), *(arg for path in paths for arg in ("-b", str(path)))]
        # The helper is started with no environment: nothing of the run's (LD_PRELOAD...) reaches
        # it as root. It reads the command's from a file in memory: not from its arguments, which anyone may read.
        env_fd = _memory_file(b"".join(os.fsencode(f"{name}={value}") + b"\0" for name, value in env.items()))
        try:
            return subprocess.Popen([str(self.helper), *options, "-E", str(env_fd), "-x", program, "--", *argv],
                                    env={}, cwd=cwd, pass_fds=(env_fd,), **popen)
        finally:
            os.close(env_fd)

    def preexec(self, cwd: Path, parent: Optional[int] = None) -> Callable[[], None]:
        """The function the forked child runs before ``exec``: its mounts, then its user (killed
        with ``parent``, this process unless said: a warm start's zygote)."""
        covers, runner = covered(self.paths, self.user), parent or os.getpid()

        def enter() -> None:
            try:
                _private_namespace()
                _mount_covers(covers)
                _mount_own_proc()
                os.chdir(cwd)
                _become(self.user, runner)
            except BaseException as exc:  # said in the training log, which is the child's stderr
                os.write(2, f"wml-runner: cannot start the command as {self.user.name}: {exc}\n".encode())
                raise
        return enter


def _memory_file(content: bytes) -> int:
    """A file descriptor, at its start, of a file in memory that holds ``content``."""
    fd = os.memfd_create("wml-enter", os.MFD_CLOEXEC)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _become(user: RunUser, runner: int) -> None:
    """Drop to ``user`` for good: no groups, umask 077, no new privileges, killed with the runner."""
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)
    os.umask(0o077)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    if os.getppid() != runner:  # the runner died before the line above
        os._exit(137)


def covered(paths: tuple[Path, ...], user: Optional[RunUser]) -> dict[Path, list[Path]]:
    """For each highest folder above one of ``paths`` that ``user`` (None: any other user)
    cannot pass, the paths under it to show (none under another one)."""
    covers: dict[Path, list[Path]] = {}
    for path in _outermost(paths):
        blocked = next((p for p in reversed(path.parents) if not _passable(p, user)), None)
        if blocked is not None:
            covers.setdefault(blocked, []).append(path)
    return covers


def _outermost(paths: tuple[Path, ...]) -> list[Path]:
    """``paths`` less those under another of them."""
    return [p for p in paths if not any(q != p and p.is_relative_to(q) for q in paths)]


def _passable(folder: Path, user: Optional[RunUser]) -> bool:
    """Whether ``user`` (with no supplementary group) may pass through ``folder``."""
    info = os.stat(folder)
    if user is not None and info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if user is not None and info.st_gid == user.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def show_only(covers: dict[Path, list[Path]]) -> None:
    """In a mount namespace of this process's own: a tmpfs on each folder of ``covers`` (see
    ``covered``), showing only its paths."""
    _private_namespace()
    _mount_covers(covers)


def _private_namespace() -> None:
    """Enter a mount namespace of this process's own, whose mounts never reach the host's."""
    _check(_libc.unshare(_CLONE_NEWNS), "unshare")
    _mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE)


def _mount_own_proc() -> None:
    """A procfs of this namespace's own on ``/proc`` that shows only the processes of the user
    who looks (``PROC_OPTIONS``)."""
    _mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, PROC_OPTIONS)


def _mount_covers(covers: dict[Path, list[Path]]) -> None:
    """A tmpfs on each covered folder, showing only its paths (bound from folders opened before
    the tmpfs hides them)."""
    os.umask(0o022)
    held = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for paths in covers.values() for path in paths}
    for folder, paths in covers.items():
        _mount(b"tmpfs", bytes(folder), b"tmpfs", _MS_NOSUID | _MS_NODEV, COVER_OPTIONS)
        for path in paths:
            os.makedirs(path, mode=0o755)
            _mount(f"/proc/self/fd/{held[path]}".encode(), bytes(path), None, _MS_BIND | _MS_REC)
    for fd in held.values():
        os.close(fd)


@functools.cache
def runtime_paths() -> tuple[Path, ...]:
    """What a command run with this Python needs to see: its installation, its environment's
    packages, and where ``wml_core`` and ``wml_jupyter`` (``from wml_jupyter import run``) are
    (found once per process: the fork server finds them for every runner, ``wml_runner.preload``)."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent}
    for name in ("wml_core", "wml_jupyter"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.add(Path(list(spec.submodule_search_locations)[0]).parent)
    return tuple(sorted({p.resolve() for p in paths}))


def isolation_gap(work_dir: Path) -> Optional[str]:
    """Why this host cannot run commands as leased users with runners working under
    ``work_dir`` (None: it can)."""
    if os.geteuid() != 0:
        return "the backend does not run as root, so it cannot run each run as a user of its own"
    if not shutil.which("useradd") and not _some_user_exists():
        return f"useradd is not installed and no {USER_PREFIX}* users exist"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["true"], preexec_fn=_probe_namespace, check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return ("this host does not allow a run a mount namespace with a /proc of its own (Linux 5.8 or "
                "later, and the right to mount), to hide other runs' processes and show it only what it needs")
    return None


def _probe_namespace() -> None:
    _private_namespace()
    _mount_own_proc()


def _some_user_exists() -> bool:
    return any(entry.pw_name.startswith(USER_PREFIX) for entry in pwd.getpwall())
