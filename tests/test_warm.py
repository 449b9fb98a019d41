"""The warm Python (tests/warm.py) behaves as `subprocess` with `sys.executable` would: argv, cwd, environment, exit
codes, uncaught errors, signals and pipes; and it refuses an environment it could not honour."""

import os
import shlex
import signal
import subprocess

import pytest
import warm


def test_a_fork_gets_its_argv_cwd_environment_and_exit_code(tmp_path):
    code = "import os, sys, tempfile; print(sys.argv, os.getcwd(), os.environ['ASKED'], tempfile.gettempdir()); sys.exit(3)"
    env = {**os.environ, "ASKED": "yes", "TMPDIR": str(tmp_path)}
    done = warm.run(["-c", code, "a", "b c"], cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (3, f"['-c', 'a', 'b c'] {tmp_path} yes {tmp_path}\n", "")
    assert "ASKED" not in os.environ


def test_a_cwd_that_is_not_there_fails_that_fork_alone(tmp_path):
    done = warm.run(["-c", "pass"], cwd=tmp_path / "gone")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("FileNotFoundError")
    assert warm.run(["-c", "print('still serving')"]).stdout == "still serving\n"


def test_a_long_request_arrives_whole():
    argument = "x" * 300_000  # past one socket read
    assert warm.run(["-c", "import sys; print(len(sys.argv[1]))", argument]).stdout == "300000\n"


def test_a_client_gone_before_its_whole_request_costs_the_server_nothing():
    """A process killed while it asks for a fork (a proxy SIGKILLed with its parent) leaves half a request: the server
    drops it and serves the next, rather than read its closed end forever."""
    import socket

    conn = socket.socket(socket.AF_UNIX)
    conn.connect(warm.server().path)
    socket.send_fds(conn, [b"R"], [0, 1, 2])
    conn.sendall(b'{"argv": ["-c", "pri')
    conn.close()
    assert warm.run(["-c", "print('still serving')"], timeout=30).stdout == "still serving\n"


def test_a_module_runs_as_main_with_its_arguments():
    done = warm.run(["-m", "nfp", "config", "train.epochs=7"])
    assert done.returncode == 0 and "epochs: 7" in done.stdout


def test_a_fork_finds_what_the_server_computed_once_before_forking():
    """A "module:function" in PRELOAD runs in the server: MLflow's map of modules to installed packages (~1.5 CPU-s,
    made when a model is logged or loaded) is there in every fork, not made again in each."""
    code = "import mlflow.utils.requirements_utils as r; print(sorted(r._MODULES_TO_PACKAGES['keras']))"
    assert warm.run(["-c", code]).stdout == "['keras']\n"


@pytest.mark.parametrize(
    ("code", "returncode", "last_line"),
    [
        ("raise ValueError('boom')", 1, "ValueError: boom"),
        ("import sys; sys.exit('a message')", 1, "a message"),
        ("raise KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt"),
    ],
)
def test_an_uncaught_error_ends_as_python_ends_it(code, returncode, last_line):
    done = warm.run(["-c", code])
    assert done.returncode == returncode and done.stderr.strip().splitlines()[-1] == last_line


def test_atexit_runs_and_threads_are_joined_before_the_exit():
    code = (
        "import atexit, threading, time\n"
        "atexit.register(print, 'atexit ran', flush=True)\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done', flush=True))).start()\n"
    )
    assert warm.run(["-c", code]).stdout == "thread done\natexit ran\n"


def test_a_signal_reaches_the_fork_alone_and_a_timeout_is_subprocess_s():
    process = warm.Process(["-c", "import time; print('up', flush=True); time.sleep(60)"])
    assert process.stdout.readline() == "up\n" and process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    process.kill()  # after the exit: nothing to do, as with Popen
    assert warm.run(["-c", "print('still serving')"]).stdout == "still serving\n"


def test_stderr_joins_stdout_or_goes_to_a_file(tmp_path):
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True)"
    joined = warm.Process(["-c", code], stderr=subprocess.STDOUT)
    assert joined.communicate(timeout=30) == ("out\nerr\n", None)
    with open(tmp_path / "log", "w") as log:
        warm.Process(["-c", code], stdout=log, stderr=subprocess.STDOUT).wait(timeout=30)
    assert (tmp_path / "log").read_text() == "out\nerr\n"


def test_an_environment_read_at_import_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^warm: KERAS_BACKEND differs from the warm Python's \(None\): run with"):
        warm.run(["-c", "pass"], env={**os.environ, "KERAS_BACKEND": "jax"})


def test_a_fork_in_a_session_of_its_own_goes_with_its_children_when_its_group_is_killed():
    """As `start_new_session` does for Popen: the tests' tracking servers are stopped (or die) by killpg."""
    import psutil

    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(os.getsid(0) == os.getpid(), child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = warm.Process(["-c", code], start_new_session=True)
    leads_its_session, child_pid = process.stdout.readline().split()
    assert leads_its_session == "True"
    child = psutil.Process(int(child_pid))
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the fork's child outlived its group"


# A fork's own `sys.executable -c …` child (as nfp's sweep starts its trials): what it printed and how it ended
_PARENT = """
import json, os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[3:]], cwd=sys.argv[2],
                         env={**os.environ, "ASKED": "yes"}, stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
if "--term" in sys.argv:
    child.send_signal(signal.SIGTERM)
print(child.wait(), flush=True)
"""


def test_a_forks_own_python_child_is_a_fork_too_behind_a_process_it_started(tmp_path):
    code = (
        "import os, sys; print(sys.argv[1:], os.getcwd(), os.environ['ASKED'], 'tensorflow' in sys.modules, "
        "os.getppid() != int(sys.argv[1]), flush=True); sys.exit(4)"
    )
    parent = warm.run(["-c", _PARENT, code, str(tmp_path), str(os.getpid())])
    seen, code_line = parent.stdout.splitlines()
    # argv, cwd and environment as asked; TensorFlow already imported (a fork); its exit code the child's
    assert seen == f"['{os.getpid()}'] {tmp_path} yes True True" and code_line == "4", parent.stderr


def test_a_forks_tracking_server_child_is_a_fork_too():
    """`python -m mlflow …` and `-m uvicorn …` (what `mlflow server` starts), as nfp's and bench's commands."""
    code = (
        "import subprocess, sys\n"
        "for module in ('mlflow', 'uvicorn'):\n"
        "    child = subprocess.Popen([sys.executable, '-m', module, '--version'], stdout=subprocess.PIPE, text=True)\n"
        "    print(child.args[1:3] == ['-I', '-S'], module in child.communicate()[0], child.returncode)\n"
    )
    assert warm.run(["-c", code], timeout=120).stdout.splitlines() == ["True True 0"] * 2  # behind a proxy: forks


def test_a_signal_to_that_child_reaches_its_fork_and_it_ends_as_the_fork_ends():
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = warm.run(["-c", _PARENT, code, os.getcwd(), "--term"], timeout=60)
    assert parent.stdout.splitlines() == ["up", "7"], parent.stderr  # SIGTERM handled in the fork, its exit code
    dies = "import os, signal; print('up', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    assert warm.run(["-c", _PARENT, dies, os.getcwd()]).stdout.splitlines() == ["up", str(-signal.SIGKILL)]


def test_that_child_killed_takes_its_fork_with_it(tmp_path):
    import psutil

    code = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    killer = (
        "import os, signal, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, text=True)\n"
        "print(child.stdout.readline().strip(), child.pid, flush=True)\n"
        "child.kill()\n"
        "child.wait()\n"
    )
    fork, proxy = map(int, warm.run(["-c", killer, code], timeout=60).stdout.split())
    assert fork != proxy
    _, alive = psutil.wait_procs([psutil.Process(fork)], timeout=10) if psutil.pid_exists(fork) else ([], [])
    assert not alive, "the fork outlived the process that stood for it"


def test_a_child_whose_import_time_environment_differs_runs_as_a_new_python():
    code = "import sys; print('tensorflow' in sys.modules, flush=True)"
    child = (
        "import os, subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', sys.argv[1]], capture_output=True, text=True,\n"
        "                     env={**os.environ, 'KERAS_BACKEND': 'numpy'}).stdout.strip())\n"
    )
    assert warm.run(["-c", child, code], timeout=120).stdout == "False\n"


# A fork's shell commands, as `mlflow run` starts its entry point (`bash -c COMMAND`): each one's output and exit code
_SHELL = """
import os, subprocess, sys
env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
for command in sys.argv[1:]:
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    print(done.stdout.strip(), done.returncode)
"""


def test_a_forks_shell_command_running_this_python_alone_is_a_fork_and_any_other_a_real_shell(tmp_path):
    code = shlex.quote("import sys; print('tensorflow' in sys.modules, sys.argv[1:]); sys.exit(3)")
    commands = [
        f"python -c {code} 'a b' c",  # this Python, quoted words only: a fork
        f"python -c {code} $HOME",  # an expansion
        f"python -c {code} > {tmp_path}/out; cat {tmp_path}/out",  # a redirection, a second command
        f"A=1 python -c {code}",  # an assignment
        f"python -c {code} 'a",  # an unterminated quote: bash's error, exit 2
    ]
    lines = warm.run(["-c", _SHELL, *commands], timeout=120).stdout.splitlines()
    assert lines == ["True ['a b', 'c'] 3", f"False ['{os.environ['HOME']}'] 3", "False [] 0", "False [] 3", " 2"]


def test_a_command_bash_runs_by_name_is_a_fork_under_its_function_and_a_new_python_where_the_environment_differs():
    """warm.bash_functions: a script's `nfp …` (here `probe`) runs in a fork of the warm Python, its arguments, exit
    code and stdout its own; under an environment read at import that differs, in a new Python, as bash's own child."""
    code = "import os, sys; print(os.getppid(), 'tensorflow' in sys.modules, sys.argv[1:]); sys.exit(3)"
    env = {**os.environ, **warm.bash_functions({"probe": ["-c", code]})}
    script = 'probe a "b c"; echo "exit $? bash $$"'
    forked = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    bash = forked.stdout.splitlines()[-1].split()[-1]
    assert forked.stdout.splitlines() == [f"{warm.server().proc.pid} True ['a', 'b c']", f"exit 3 bash {bash}"]
    new = subprocess.run(["bash", "-c", script], env={**env, "TF_CPP_MIN_LOG_LEVEL": "1"}, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    bash = new.stdout.splitlines()[-1].split()[-1]
    assert new.stdout.splitlines() == [f"{bash} False ['a', 'b c']", f"exit 3 bash {bash}"]
