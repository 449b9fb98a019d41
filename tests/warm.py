"""A warm Python for the tests' nfp processes: TensorFlow, Keras, MLflow and nfp's commands imported once per test
process (about 7 CPU-s each time otherwise), then each `python -c CODE …` or `python -m MODULE …` a fork of it.

The fork is a whole process of its own, as `subprocess.Popen([sys.executable, …])` makes: its pid (signals reach it
alone), its cwd, environment and argv, its stdout and stderr as pipes, a fresh `__main__`, and Python's own exit
(threads joined, atexit run, streams flushed; an uncaught exception printed, exit code 1). What it cannot change is
what happened at import: a command whose environment differs in a variable read then (PYTHONPATH, TF_CPP_*, KERAS_*,
…) is refused; run it with subprocess.

A fork's own children of nfp, bench, mlflow or uvicorn (`sys.executable -m nfp …`: the sweep's trials, bench's measured
runs, a tracking server's `mlflow server` and its uvicorn, and a shell command that runs this Python alone: `mlflow
run`'s entry points) are forks too, each behind a small real process that its caller sees as the child (`_PROXY`); one
whose environment differs at import starts as a new Python. So is a command that bash runs by name (a launch
script's `nfp …`) under the exported functions of `bash_functions`.

The fork server is one process per test process (`server()`), started on first use and stopped at exit. It forks from
its one Python thread (the libraries' native threads, OpenBLAS's and jemalloc's, are fork-safe by their own atfork
handlers), with what it imported frozen out of the garbage collector (gc.freeze), so that a fork's collections do not
copy every page it shares."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

# Imported in the server before any fork: what nfp's train, evaluate, predict and sweep commands import
PRELOAD = (
    "tensorflow", "keras", "mlflow", "mlflow.pyfunc", "matplotlib.pyplot", "nfp.cli", "nfp.training.train",
    "nfp.inference.evaluate", "nfp.inference.predict", "nfp.sweep.worker",
    # and what those import only once they run: MLflow's SQL store (SQLAlchemy, Alembic: 1.1 CPU-s), GitPython (its
    # source tags), the digits of the generated Moving MNIST
    "mlflow.store.tracking.sqlalchemy_store", "git", "sklearn.datasets",
    # and, "module:function", what they compute once per process: MLflow's map of modules to the installed packages
    # (importlib.metadata over every distribution, ~1.5 CPU-s), made when a model is logged or loaded
    "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
)  # fmt: skip
# Read by Python, TensorFlow, Keras or MLflow at import: a fork would keep the server's value
READ_AT_IMPORT = (
    "PYTHON", "TF_CPP_", "TF_ENABLE_", "TF_USE_", "TF_XLA_", "XLA_", "KERAS_", "LD_", "MPLBACKEND", "OMP_", "MKL_",
)  # fmt: skip
KEPT = ("PYTHONUNBUFFERED",)  # applied by the fork itself
# A fork's `python -m MODULE` children that are forks too: nfp's and bench's commands, and a tracking server (`mlflow
# server` and the uvicorn it starts; a cold one costs ~5 CPU-s, a warm one ~1)
CHILD_MODULES = ("nfp", "bench", "mlflow", "uvicorn")
_STARTING_ENV = dict(os.environ)  # the server's: the test process's as it starts, before any test changes it

_SERVER = textwrap.dedent(
    """
    import atexit, contextlib, gc, importlib, io, json, os, runpy, select, shlex, shutil, signal, socket, subprocess
    import sys, tempfile, threading, traceback, types
    SOCKET, SETTINGS = sys.argv[1], json.loads(sys.argv[2])
    STARTED = dict(os.environ)
    for name in SETTINGS["preload"]:
        module, _, call = name.partition(":")
        loaded = importlib.import_module(module)
        if call:
            getattr(loaded, call)()
    gc.freeze()  # what is here now stays out of the forks' collections, which would otherwise copy every page
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(SOCKET)
    listener.listen(64)
    print("ready", flush=True)
    children = {}  # pid: the connection its exit status goes to (None once its client is gone)


    def become(request, fds):
        \"\"\"In the fork: the command's process (never returns to the loop).\"\"\"
        listener.close()
        for conn in filter(None, children.values()):
            conn.close()
        for fd, target in zip(fds, (0, 1, 2)):
            os.dup2(fd, target)
            os.close(fd)
        if request.get("new_session"):  # Popen's start_new_session: its own session, so that killpg reaches its children
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # read again from TMPDIR at its next use, as a new process would
        for signum in request.get("ignored", ()):  # ignored where it was started: a new Python keeps them ignored
            signal.signal(signum, signal.SIG_IGN)
        start_python_children_warm()
        unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False))
        sys.stdout = io.TextIOWrapper(io.open(1, "wb", buffering=0 if unbuffered else -1, closefd=False),
                                      write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(io.open(2, "wb", buffering=0 if unbuffered else -1, closefd=False),
                                      errors="backslashreplace", line_buffering=True, write_through=unbuffered)
        try:
            run(request["argv"])
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
            if not isinstance(code, int):  # sys.exit("a message")
                print(code, file=sys.stderr)
                code = 1
        except BaseException as error:
            sys.excepthook(type(error), error, error.__traceback__.tb_next)
            code = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
        exit_as_python_does(code)


    def start_python_children_warm():
        \"\"\"In the fork: a Python process it starts of a CHILD_MODULES module (`sys.executable -m nfp …`, as the sweep
        starts its trials, bench its children, `mlflow server` its uvicorn) or of `-c CODE` is a fork too, behind a
        small real process (`_PROXY`) that is the child its caller sees: its pid, cwd, environment, stdio, preexec_fn
        and session; signals it gets go to the fork, whose exit it ends with; killed, it takes the fork with it. So is a
        shell's `python -m nfp …` (`bash -c COMMAND`, as `mlflow run` starts an entry point), when the command is that
        alone and its `python` is this one: bash would exec it in its own process.\"\"\"
        popen_init = subprocess.Popen.__init__

        def __init__(self, args, *positional, **options):
            if not positional and (python_args := warm_args(args, options)) is not None:
                args = [sys.executable, "-I", "-S", "-c", SETTINGS["proxy"], SOCKET, *python_args]
            popen_init(self, args, *positional, **options)

        subprocess.Popen.__init__ = __init__


    def warm_args(args, options):
        \"\"\"The Python arguments (`-m nfp …`, `-c CODE …`) of a child that can be a fork, else None.\"\"\"
        if not isinstance(args, list) or any(options.get(name) for name in ("shell", "executable", "pass_fds")):
            return None
        env = os.environ if options.get("env") is None else options["env"]
        if args[:1] == [sys.executable]:
            python_args = args[1:]
        elif len(args) == 3 and os.path.basename(str(args[0])) in ("bash", "sh") and args[1] == "-c":
            python_args = python_of_shell(args[2], env)
        else:
            return None
        if not python_args or len(python_args) < 2:
            return None
        if not (python_args[0] == "-c" or python_args[0] == "-m" and python_args[1].split(".")[0] in SETTINGS["modules"]):
            return None
        read = tuple(SETTINGS["read_at_import"])
        same = all(env.get(key) == STARTED.get(key) for key in set(env) | set(STARTED)
                   if key.startswith(read) and key not in SETTINGS["kept"])
        return python_args if same else None


    def python_of_shell(command, env):
        \"\"\"The arguments of a shell command that runs this Python and nothing else (no expansion, redirection,
        assignment or second command: quoted words only), else None.\"\"\"
        quote = None
        for char in command:
            if quote:
                if char == quote:
                    quote = None
                elif quote == '"' and char in "$`\\\\":
                    return None
            elif char in "'\\"":
                quote = char
            elif char in "$`\\\\;&|<>()*?[]{}~#!\\n":
                return None
        if quote:  # unterminated: the shell's error to give
            return None
        words = shlex.split(command)
        found = words and shutil.which(words[0], path=env.get("PATH"))
        if not found or os.path.normpath(found) != os.path.normpath(sys.executable):  # an assignment is found nowhere
            return None
        return words[1:]


    def run(argv):
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


    def exit_as_python_does(code):
        \"\"\"Python's exit less its teardown of every module, which in a fork copies each page it touches (2 CPU-s):
        other threads joined, atexit run, streams flushed; an uncaught KeyboardInterrupt ends by SIGINT.\"\"\"
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


    parent = os.getppid()
    while os.getppid() == parent:  # a test process that died leaves no server behind
        clients = {conn: pid for pid, conn in children.items() if conn is not None}
        readable, _, _ = select.select([listener, *clients], [], [], 0.05)
        for conn in readable:
            if conn is not listener:  # a client says nothing after its request: this is its end (killed)
                if not conn.recv(1):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(clients[conn], signal.SIGKILL)  # its command goes with it
                    conn.close()
                    children[clients[conn]] = None
                continue
            conn, _ = listener.accept()
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)  # stdin, stdout, stderr; then the request, a JSON line
            message = b""
            while not message.endswith(b"\\n") and (chunk := conn.recv(1 << 16)):
                message += chunk
            if not message.endswith(b"\\n"):  # its client died before its whole request (its end of file): nothing
                for fd in fds:                 # to run, and the loop would otherwise read that end forever
                    os.close(fd)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                try:
                    become(json.loads(message), fds)
                except BaseException:  # not set up (a cwd that is not there): said on its stderr, never back to the loop
                    traceback.print_exc()
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            conn.sendall(f"pid {pid}\\n".encode())
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid)
            if conn is not None:
                with contextlib.suppress(OSError):  # its client is gone
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\\n".encode())
                conn.close()
    """
)


# The real process behind which a fork's own Python child runs (start_python_children_warm): it hands the fork its
# stdio, cwd, environment and ignored signals, passes on the signals it gets, and ends as the fork ends.
_PROXY = textwrap.dedent(
    """
    import json, os, signal, socket, sys
    pid, pending = None, []


    def forward(signum, frame):
        if pid is None:
            pending.append(signum)
        else:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


    FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
    ignored = [signum for signum in FORWARDED if signal.getsignal(signum) == signal.SIG_IGN]
    for signum in set(FORWARDED) - set(ignored):
        signal.signal(signum, forward)
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sys.argv[1])
    socket.send_fds(conn, [b"R"], [0, 1, 2])
    request = {"argv": sys.argv[2:], "cwd": os.getcwd(), "env": dict(os.environ), "ignored": ignored}
    conn.sendall(json.dumps(request).encode() + b"\\n")
    replies = conn.makefile("rb")
    pid = int(replies.readline().split()[1])
    for signum in pending:
        forward(signum, None)
    line = replies.readline()
    code = int(line.split()[1]) if line else 1
    if code < 0:  # ended by a signal: so does this process
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)
    """
)


class _Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nfp-warm-")
        self.path = os.path.join(self.dir, "socket")
        settings = {"preload": PRELOAD, "read_at_import": READ_AT_IMPORT, "kept": KEPT, "proxy": _PROXY,
                    "modules": CHILD_MODULES}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, self.path, json.dumps(settings)], stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_STARTING_ENV,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the warm Python did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


_server: list[_Server] = []


def server() -> _Server:
    if not _server:
        _server.append(_Server())
        atexit.register(_server[0].stop)
    return _server[0]


# A command that bash runs by name (`nfp train …` in a launch script, after it sources the venv) as a fork too: an
# exported bash function of that name (bash prefers a function to a program on PATH) runs this, which is the proxy,
# or a new Python where the environment differs at import (as the console script would be)
_SHIM = textwrap.dedent(
    """
    import json, os, sys
    settings, args = json.load(open(sys.argv[1])), sys.argv[2:]
    sys.path.insert(0, settings["warm"])
    from warm import differs_at_import
    if differs_at_import(os.environ, settings["started"]):
        os.execv(settings["python"], [settings["python"], *args])
    sys.argv = [sys.argv[0], settings["socket"], *args]
    exec(settings["proxy"])
    """
)


def bash_functions(commands: dict[str, list[str]]) -> dict[str, str]:
    """Environment variables under which bash runs each command name as a fork of the warm Python with those Python
    arguments after its own: {"nfp": ["-m", "nfp"]} makes a script's `nfp doctor …` `python -m nfp doctor …`."""
    warm = server()
    shim, settings = os.path.join(warm.dir, "shim.py"), os.path.join(warm.dir, "shim.json")
    if not os.path.exists(shim):
        with open(settings, "w") as out:
            json.dump({"python": sys.executable, "socket": warm.path, "proxy": _PROXY, "started": _STARTING_ENV,
                       "warm": os.path.dirname(os.path.abspath(__file__))}, out)  # fmt: skip
        with open(shim, "w") as out:
            out.write(_SHIM)
    python = " ".join(map(shlex.quote, [sys.executable, "-I", "-S", shim, settings]))
    return {
        f"BASH_FUNC_{name}%%": f'() {{ {python} {" ".join(map(shlex.quote, args))} "$@"; }}'
        for name, args in commands.items()
    }


def differs_at_import(env, started: dict) -> list[str]:
    """The variables read at import whose value in `env` is not the one the warm Python `started` with."""
    return [key for key in sorted(set(env) | set(started))
            if key.startswith(READ_AT_IMPORT) and key not in KEPT and env.get(key) != started.get(key)]  # fmt: skip


def _refuse_import_time_changes(env: dict, started: dict) -> None:
    if differing := differs_at_import(env, started):
        key = differing[0]
        raise ValueError(f"warm: {key} differs from the warm Python's ({started.get(key)!r}): run with subprocess")


class Process:
    """Popen's ways (pid, poll, wait, communicate, send_signal, kill, terminate, returncode, stdout, stderr) for a
    fork of the warm Python. stdout and stderr: PIPE (the default), DEVNULL, a file or, for stderr, STDOUT;
    start_new_session as Popen's (the fork leads a session of its own, which killpg reaches with its children)."""

    def __init__(self, argv: list[str], *, cwd=None, env=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text: bool = True, start_new_session: bool = False):  # fmt: skip
        warm = server()
        env = dict(os.environ if env is None else env)
        _refuse_import_time_changes(env, _STARTING_ENV)
        self.stdout = self.stderr = None
        sent = [os.open(os.devnull, os.O_RDONLY)]  # stdin
        for name, target in (("stdout", stdout), ("stderr", stderr)):
            if target == subprocess.PIPE:
                read, write = os.pipe()
                setattr(self, name, open(read, errors="replace") if text else open(read, "rb"))
            elif target == subprocess.STDOUT:
                write = os.dup(sent[1])
            elif target == subprocess.DEVNULL:
                write = os.open(os.devnull, os.O_WRONLY)
            else:
                write = os.dup(target if isinstance(target, int) else target.fileno())
            sent.append(write)
        self._conn = socket.socket(socket.AF_UNIX)
        self._conn.connect(warm.path)
        request = {"argv": list(argv), "cwd": os.path.abspath(cwd or os.getcwd()), "env": env,
                   "new_session": start_new_session}  # fmt: skip
        socket.send_fds(self._conn, [b"R"], sent)
        self._conn.sendall(json.dumps(request).encode() + b"\n")
        for fd in sent:
            os.close(fd)
        self._received = b""
        self.pid = int(self._reply(None).split()[1])
        self.args = argv
        self.returncode = None

    def _reply(self, timeout) -> str | None:
        """The server's next line about this process ("pid N", "exit CODE"); None if none within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._received:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            chunk = self._conn.recv(4096)
            if not chunk:
                raise RuntimeError(f"warm: the server went away while running {self.args[:2]}")
            self._received += chunk
        line, self._received = self._received.split(b"\n", 1)
        return line.decode()

    def poll(self):
        if self.returncode is None and (line := self._reply(0)) is not None:
            self._exited(line)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            line = self._reply(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._exited(line)
        return self.returncode

    def _exited(self, line: str) -> None:
        self.returncode = int(line.split()[1])
        self._conn.close()

    def communicate(self, timeout=None):
        """(stdout, stderr), read to their end, and the exit awaited; TimeoutExpired past `timeout` (the process
        left running, as Popen does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outputs = {None: None}
        readers = [threading.Thread(target=lambda s=s: outputs.__setitem__(s, s.read()), daemon=True)
                   for s in (self.stdout, self.stderr) if s is not None]  # fmt: skip
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return outputs[self.stdout], outputs[self.stderr]

    def send_signal(self, signum) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited, its status not yet read
                os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)


def run(argv: list[str], *, cwd=None, env=None, timeout=None) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True, …) in a fork of the warm Python; killed past `timeout`."""
    process = Process(argv, cwd=cwd, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
