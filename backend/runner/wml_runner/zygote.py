"""Warm starts: a run's ``python <script>`` forked from an interpreter that already imported its
framework (``import torch`` costs a second or more of CPU per run otherwise).

One zygote per framework, version and start-up environment (``python -m wml_runner.zygote
SOCKET MODULE...``), started by the local executor from a fresh interpreter with an environment of
allow-listed names only (``startup_env``): it holds no secret, and it reads nothing any run sends
it. For each connection it forks a child, and only that child reads the request (the command's
argument vector, environment, working directory, user, folders to show, limits, and its log as a
file descriptor). The child takes the run's isolation exactly as a cold command does
(``isolation.Sandbox``: its mount namespace, its user, umask, no new privileges), says
``pid N`` or ``error WHY``, closes the connection, and runs the script as ``python script`` would.
The zygote sends ``exit N`` (Popen's convention: -N for a signal) when the child ends, and kills
the child's process group when the runner's end of the connection closes first (its runner died).
A zygote that could not import its modules answers ``cold WHY`` to every connection.

Nothing in a zygote touches CUDA: the child's ``CUDA_VISIBLE_DEVICES`` applies when the script
first uses a GPU. Per-process randomness made at import (Python's and NumPy's generators, torch's
seed, multiprocessing's authkey) is drawn again in each child; the one thing warm runs share is
``str`` hashing's seed, fixed when an interpreter starts.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
import types
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any, Mapping, Optional

from wml_runner.isolation import RunUser, Sandbox

#: Set by the executor to the socket of the zygote for the run's framework (unset: runs start cold).
ZYGOTE_ENV = "WML_ZYGOTE"
#: The frameworks whose runs start warm, by the manifest's ``framework.name``: the modules their
#: zygote imports.
FRAMEWORK_MODULES = {"pytorch": ("torch",), "tensorflow": ("tensorflow",), "keras": ("keras",)}
#: The variables an interpreter and the native libraries it loads read once, at start or load
#: (locale, hash seed, module path, OpenMP/MKL threads...): a zygote starts with a command's
#: values of these, and serves only commands whose values are the same.
STARTUP_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHASHSEED",
               "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8",
               "PYTHONSAFEPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STARTUP_PREFIXES = ("LC_", "KMP_", "GOMP_")
#: Seconds a runner waits for a zygote that is starting (the executor starts it with the run).
CONNECT_WAIT_S = 10.0
#: Seconds a zygote asked to stop still serves: the runners its executor started just before may
#: not have asked yet (a new executor's zygote takes over its socket's name meanwhile).
LINGER_S = 20.0
#: Longest request a child reads (a command's environment is a few KiB).
MAX_REQUEST = 1 << 20
#: The zygote's standard input: a pipe whose other end its executor holds; its end (the executor
#: closed, or its process died) stops the zygote as SIGTERM does.
ALIVE_FD = 0
_LEN = struct.Struct("!I")
#: The inode of the socket file each listener made, by name.
_bound: dict[str, int] = {}
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)


def startup_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that an interpreter reads once, when it starts (``STARTUP_ENV``)."""
    return {k: v for k, v in env.items() if k in STARTUP_ENV or k.startswith(STARTUP_PREFIXES)}


# -- the runner's side ------------------------------------------------------------------------
def warm_argv(command: str, env: Mapping[str, str], cwd: Path, executable: str = sys.executable) -> Optional[list[str]]:
    """``command``'s argument vector when it is ``python SCRIPT [ARG...]`` run by this interpreter,
    with nothing for a shell to expand; else None (the command runs cold, through bash)."""
    import shlex

    if any(c in command for c in "$`\\*?[]{}~#!"):
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        argv = list(lexer)
    except ValueError:
        return None
    if len(argv) < 2 or any(set(token) <= set("();<>|&") for token in argv) or "=" in argv[0]:
        return None
    if argv[1].startswith("-") or not argv[1].endswith(".py"):
        return None
    found = _which(argv[0], env, cwd)
    same = found and os.path.dirname(os.path.abspath(found)) == os.path.dirname(executable) \
        and os.path.realpath(found) == os.path.realpath(executable)
    return argv if same else None


def _which(program: str, env: Mapping[str, str], cwd: Path) -> Optional[str]:
    """The file bash runs for ``program`` (searched in the command's PATH)."""
    import shutil
    return shutil.which(program, path=env.get("PATH", "")) if "/" not in program else str(cwd / program)


class WarmProcess:
    """A command a zygote started for this runner: ``pid``, ``poll()`` and ``wait()`` as Popen's."""

    def __init__(self, conn: socket.socket, pid: int):
        self.conn, self.pid = conn, pid
        self.returncode: Optional[int] = None
        self._lock = threading.Lock()

    def poll(self) -> Optional[int]:
        """The exit code once the command has ended (negative: the signal), else None."""
        return self._read(0)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the end of the command (at most ``timeout`` s: else TimeoutExpired); its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._read(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))) is None:
            if deadline is not None and time.monotonic() >= deadline:
                import subprocess
                raise subprocess.TimeoutExpired(self.pid, timeout)
        return self.returncode

    def _read(self, timeout: float) -> Optional[int]:
        if self.returncode is None and select.select([self.conn], [], [], timeout)[0]:
            with self._lock:
                if self.returncode is None:
                    line = _readline(self.conn)
                    self.returncode = int(line[5:]) if line.startswith("exit ") else -signal.SIGKILL
                    self.conn.close()
        return self.returncode


class ColdStart(Exception):
    """The zygote cannot start this command (its import failed, another environment): start it cold."""


def spawn(socket_path: str, argv: list[str], env: dict[str, str], cwd: Path, log_fd: int,
          sandbox: Optional[Sandbox]) -> WarmProcess:
    """Start ``argv`` forked from the zygote at ``socket_path``, isolated as ``sandbox`` says, its
    output to ``log_fd``. Raises ColdStart (with why) when it must run cold instead."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _connect(conn, Path(socket_path))
        body = json.dumps(_request(argv, env, cwd, sandbox)).encode()
        try:
            socket.send_fds(conn, [_LEN.pack(len(body)) + body], [log_fd])
        except BrokenPipeError:
            pass  # it answered at once (cold) and went: its answer is still to read
        line = _readline(conn)
    except OSError as exc:
        conn.close()
        raise ColdStart(f"the warm interpreter is not reachable ({type(exc).__name__})") from None
    if line.startswith("pid "):
        return WarmProcess(conn, int(line[4:]))
    conn.close()
    if line.startswith("cold "):
        raise ColdStart(line[5:])
    import subprocess
    raise subprocess.SubprocessError(f"Exception occurred in preexec_fn: {line[6:] or 'the command did not start'}")


def _connect(conn: socket.socket, path: Path) -> None:
    """Connect to the socket at ``path`` through its folder's descriptor (a path may be longer
    than a socket address holds)."""
    deadline = time.monotonic() + CONNECT_WAIT_S
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        while True:
            try:
                return conn.connect(f"/proc/self/fd/{folder}/{path.name}")
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the zygote is starting
    finally:
        os.close(folder)


def _request(argv: list[str], env: dict[str, str], cwd: Path, sandbox: Optional[Sandbox]) -> dict[str, Any]:
    """What the zygote's child needs to become the command: the same as a cold command inherits."""
    mask = os.umask(0)
    os.umask(mask)
    limits = {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource) if name.startswith("RLIMIT_")}
    user = sandbox and {"name": sandbox.user.name, "uid": sandbox.user.uid, "gid": sandbox.user.gid}
    executable = _which(argv[0], env, cwd)
    shell = {"SHLVL": str(int(env.get("SHLVL") or 0)), "_": executable}  # as bash -c leaves them for what it execs
    return {"argv": argv, "executable": executable, "env": {**env, **shell}, "cwd": str(cwd), "umask": mask,
            "limits": limits,
            "affinity": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "user": user, "paths": [str(p) for p in sandbox.paths] if sandbox else []}


def _readline(conn: socket.socket, limit: int = 4096) -> str:
    """One line from ``conn`` ('' at its end)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# -- the zygote -------------------------------------------------------------------------------
def preload(modules: list[str]) -> Optional[str]:
    """Import ``modules``; None, or why the zygote cannot serve (one line)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - any failure means: start runs cold
            return f"importing {name} ahead of the run failed ({type(exc).__name__}: {str(exc)[:200]})"
    if threading.active_count() > 1:
        return f"importing {', '.join(modules)} started threads, so it cannot be forked safely"
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        return "importing torch initialised CUDA, so it cannot be forked safely"
    return None


def serve(listener: socket.socket, failure: Optional[str]) -> dict[str, Any]:
    """Fork a child per connection until ``LINGER_S`` after it is asked to stop (SIGTERM, or the
    end of ``ALIVE_FD``) and no child is left; returns
    only in a child, with its request, once it has become the command."""
    stop_at: list[float] = []  # when to stop accepting, once asked to stop
    signal.signal(signal.SIGTERM, lambda *_: stop_at.append(time.monotonic() + LINGER_S))
    poller, children = select.poll(), {}  # fd -> (conn, pid, pidfd), for conns and pidfds alike
    poller.register(listener, select.POLLIN)
    poller.register(ALIVE_FD, select.POLLIN)
    while not stop_at or time.monotonic() < min(stop_at) or children:
        if stop_at and time.monotonic() >= min(stop_at) and listener.fileno() >= 0:
            poller.unregister(listener)
            _close_listener(listener)
        for fd, _ in poller.poll(500):
            if fd == ALIVE_FD:  # the executor that started it is gone
                poller.unregister(ALIVE_FD)
                stop_at.append(time.monotonic() + LINGER_S)
            elif fd == listener.fileno():
                child = _accept(listener, failure, poller, children)
                if child is not None:
                    return child
            elif fd in children:
                _settle(fd, poller, children)
    _close_listener(listener)
    sys.exit(0)


def _close_listener(listener: socket.socket) -> None:
    """Stop listening, removing the socket's file unless a newer zygote's has replaced it."""
    if listener.fileno() >= 0:
        name = Path(listener.getsockname())
        try:
            if name.stat().st_ino == _bound[name.name]:
                name.unlink()
        except (OSError, KeyError):
            pass
        listener.close()


def _accept(listener: socket.socket, failure: Optional[str], poller: select.poll,
            children: dict) -> Optional[dict[str, Any]]:
    """Fork a child for the next connection (in the child: its request, once it is the command)."""
    conn, _ = listener.accept()
    peer_uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    if failure or peer_uid != os.geteuid():  # answered, unread, and closed when its runner closes
        conn.sendall(f"cold {failure or 'not a runner of this host'}\n".encode())
        children[conn.fileno()] = (conn, None, None)
        poller.register(conn, select.POLLRDHUP | select.POLLHUP)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        return _become_command(conn, [listener, *{c.fileno(): c for c, _, _ in children.values()}.values()])
    print(f"zygote: forked {pid}", file=sys.stderr, flush=True)
    pidfd = os.pidfd_open(pid)
    children[conn.fileno()] = children[pidfd] = (conn, pid, pidfd)
    poller.register(conn, select.POLLRDHUP | select.POLLHUP)
    poller.register(pidfd, select.POLLIN)
    return None


def _settle(fd: int, poller: select.poll, children: dict) -> None:
    """A child ended (say how to its runner), or its runner is gone (kill the child and its group;
    its end follows)."""
    conn, pid, pidfd = children[fd]
    if pid is None:  # a runner told to start cold is gone
        poller.unregister(fd)
        del children[fd]
        conn.close()
        return
    if fd != pidfd:
        poller.unregister(fd)
        del children[fd]
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return
    _, status = os.waitpid(pid, 0)
    if conn.fileno() in children:
        try:
            conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
        except OSError:
            pass  # its runner is gone
        poller.unregister(conn.fileno())
        del children[conn.fileno()]
    poller.unregister(pidfd)
    del children[pidfd]
    conn.close()
    os.close(pidfd)


# -- the child: becoming the command --------------------------------------------------------
def _become_command(conn: socket.socket, others: list[socket.socket]) -> dict[str, Any]:
    """In a forked child: read the request, take the run's isolation; the request (or exit).
    ``others``: the zygote's sockets, closed (the command must not accept, or end, other runs')."""
    try:
        for each in others:
            os.close(each.detach())
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        request, log_fd = _receive(conn)
        mismatch = _mismatch(request["env"])
        if mismatch:
            conn.sendall(f"cold {mismatch}\n".encode())
            os._exit(0)
        _isolate(request, log_fd, conn.fileno())
        conn.sendall(f"pid {os.getpid()}\n".encode())
    except BaseException as exc:  # noqa: BLE001 - said to the runner, which fails the run
        try:
            conn.sendall(f"error {type(exc).__name__}: {exc}\n".replace("\n", " ").strip().encode() + b"\n")
        finally:
            os._exit(127)
    os.close(conn.detach())
    return request


def _receive(conn: socket.socket) -> tuple[dict[str, Any], int]:
    """The request and the log's file descriptor."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 1)
    while len(data) < _LEN.size or len(data) < _LEN.size + _LEN.unpack_from(data)[0]:
        chunk = conn.recv(65536)
        if not chunk or len(data) > MAX_REQUEST:
            raise ValueError("truncated request")
        data += chunk
    if len(fds) != 1:
        raise ValueError("no log file descriptor")
    return json.loads(data[_LEN.size:]), fds[0]


def _mismatch(env: Mapping[str, str]) -> Optional[str]:
    """Why this zygote's start-up environment is not the command's (None: it is)."""
    mine, theirs = startup_env(os.environ), startup_env(env)
    names = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k) and k != "PATH")
    return f"its environment differs from the warm interpreter's ({', '.join(names)})" if names else None


def _isolate(request: dict[str, Any], log_fd: int, keep_fd: int) -> None:
    """The cold command's inheritance and isolation: session, standard streams, signals, limits,
    affinity, niceness, umask, mount namespace, user, working directory, environment."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    _default_signals()
    for name, (soft, hard) in request["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            pass  # a limit this process may not raise: it keeps its own, as lower
    os.sched_setaffinity(0, request["affinity"])
    os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
    os.umask(request["umask"])
    if request["user"]:
        user = RunUser(**request["user"])
        Sandbox(user, tuple(Path(p) for p in request["paths"])).preexec(Path(request["cwd"]), parent=os.getppid())()
        _libc.prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(1), 0, 0, 0)  # as after exec: its own /proc is its own
    else:
        os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"], PWD=os.getcwd())  # bash sets PWD too


def _default_signals() -> None:
    """Signal dispositions and mask as a freshly started interpreter has them."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP) or sig >= signal.SIGRTMIN:
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _fresh_randomness() -> None:
    """Draw again what modules drew at import (Python's ``random`` does so itself at fork)."""
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if "multiprocessing" in sys.modules:
        sys.modules["multiprocessing"].current_process().authkey = os.urandom(32)


def run_script(request: dict[str, Any]) -> None:
    """Run the request's script as ``python SCRIPT ARG...`` does: as ``__main__``, ``sys.argv``
    and ``sys.path[0]`` its own, the same messages and exit codes."""
    argv = request["argv"]
    script = os.path.join(request["cwd"], argv[1])
    sys.argv, sys.orig_argv = argv[1:], argv
    sys.executable = request["executable"]
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    _fresh_randomness()
    try:
        with open(script, "rb") as f:
            source = f.read()
    except OSError as exc:
        print(f"{argv[0]}: can't open file {script!r}: [Errno {exc.errno}] {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __builtins__=builtins, __cached__=None,
                         __loader__=SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main
    try:
        exec(compile(source, script, "exec", dont_inherit=True), main.__dict__)
    except SystemExit as exc:
        _finish(_exit_code(exc))
    except BaseException as exc:  # noqa: BLE001 - printed and exited as the interpreter does
        exc.__traceback__ = exc.__traceback__.tb_next  # from the script's own frame, as a cold start prints it
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _finish(1, signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
    _finish(0)


def _exit_code(exc: SystemExit) -> int:
    """The exit code of ``SystemExit``, its message printed as the interpreter does."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _finish(code: int, by_signal: Optional[int] = None) -> None:
    """End as the interpreter ends (its threads joined, ``atexit`` run, output flushed) but without
    tearing every module down: that would touch, and so copy, all the zygote's memory."""
    import atexit
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if by_signal is not None:  # as Python does after an uncaught KeyboardInterrupt
        signal.signal(by_signal, signal.SIG_DFL)
        os.kill(os.getpid(), by_signal)
    os._exit(code & 0xFF)


def listen(name: str) -> socket.socket:
    """A Unix socket named ``name`` in the working folder (its owner's alone), listening."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(name).unlink(missing_ok=True)
    listener.bind(name)
    _bound[name] = os.stat(name).st_ino
    listener.listen(128)
    return listener


def main(args: list[str]) -> dict[str, Any]:
    """``python -m wml_runner.zygote SOCKET_NAME MODULE...`` (in the socket's folder): listen,
    import, serve; in a child, its request."""
    listener = listen(args[0])  # first: runners may connect while the modules import
    failure = preload(args[1:])
    gc.freeze()  # what the zygote made stays shared with its children, untouched by their collections
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return serve(listener, failure)


if __name__ == "__main__":
    run_script(main(sys.argv[1:]))
