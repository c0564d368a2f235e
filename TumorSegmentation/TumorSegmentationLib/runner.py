"""Starting, feeding and stopping the background worker process (``tumorseg_core.worker``).

:class:`WorkerRunner` owns one worker process. It never blocks the caller: a reader
thread parses the worker's JSON lines onto a queue that :meth:`WorkerRunner.poll`
drains (from Slicer's main thread, on a timer or in a loop). Cancel kills the whole
process tree (torch may start helper processes), with psutil when it is installed and
with a process group (POSIX) or ``taskkill /T`` (Windows) otherwise.

Qt-free and Slicer-free: usable from Slicer, from ``PythonSlicer`` and from plain Python.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional

logger = logging.getLogger(__name__)

#: Default seconds a warm worker waits for the next request before exiting by itself.
DEFAULT_IDLE_TIMEOUT_S = 15 * 60
_STDERR_TAIL_LINES = 40
#: Events that end a request (``pong`` answers ``ping``, ``devices`` the device report, ``imported`` an import,
#: ``slice`` a slice request, ``click`` a click-network request).
FINAL_EVENTS = ("done", "error", "pong", "devices", "imported", "slice", "click")
_LIVE_RUNNERS: "weakref.WeakSet[WorkerRunner]" = weakref.WeakSet()


def default_python_executable() -> str:
    """The Python to start the worker with.

    Inside Slicer ``sys.executable`` is the application's own Python launcher, which
    cannot run scripts on its own; ``PythonSlicer`` next to it sets up the environment
    Slicer's Python needs. Elsewhere ``sys.executable`` is the interpreter to use.
    """
    folder = Path(sys.executable).parent
    for name in ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",):
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def engine_search_path() -> str:
    """The folder that contains the ``tumorseg_core`` package (it ships inside the module folder)."""
    import tumorseg_core

    return str(Path(tumorseg_core.__file__).resolve().parent.parent)


class WorkerRunner:
    """One background worker process speaking the JSON-lines protocol of ``tumorseg_core.worker``.

    Args:
        python_executable: interpreter to run (default: :func:`default_python_executable`).
        idle_timeout: seconds the worker may sit idle before it exits by itself (0: never).
        env: extra environment variables for the worker (e.g. ``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(
        self,
        python_executable: Optional[str] = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.python_executable = python_executable or default_python_executable()
        self.idle_timeout = float(idle_timeout)
        self.extra_env = dict(env or {})
        self._process: Optional[subprocess.Popen] = None
        self._events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._stderr_tail: Deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._threads: List[threading.Thread] = []
        self._next_id = 1
        self._pending: Optional[int] = None
        self._exit_reported = False
        self.pid: Optional[int] = None
        _LIVE_RUNNERS.add(self)

    # ------------------------------------------------------------------ state

    @property
    def is_alive(self) -> bool:
        """True while the worker process runs."""
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """True while a submitted request has not ended (``done``, ``error`` or ``pong``)."""
        return self._pending is not None

    def stderr_tail(self) -> str:
        """The worker's last stderr lines (its log), for error reports."""
        return "\n".join(self._stderr_tail)

    # ------------------------------------------------------------------ process

    def command(self) -> List[str]:
        """The worker command line (an argument list; never run through a shell)."""
        cmd = [self.python_executable, "-m", "tumorseg_core.worker"]
        if self.idle_timeout > 0:
            cmd += ["--idle-timeout", repr(self.idle_timeout)]
        return cmd

    def _environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        path = engine_search_path()
        env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the worker if it is not running (returns at once; ``ready`` arrives via :meth:`poll`)."""
        if self.is_alive:
            return
        self._reap()
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            # Own process group: cancel can kill the worker and everything it started.
            kwargs["start_new_session"] = True
        cmd = self.command()
        logger.info("starting worker: %s", " ".join(cmd))
        self._process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self._environment(), cwd=engine_search_path(), **kwargs,
        )
        self.pid = self._process.pid
        self._exit_reported = False
        self._stderr_tail.clear()
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._process, self._events), name="tumorseg-worker-out",
                             daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._process,), name="tumorseg-worker-err", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self, process: subprocess.Popen, events: "queue.Queue[Dict[str, Any]]") -> None:
        # The queue is passed in (not read from self) so a dead worker's late lines
        # can never land in the queue of its successor.
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("worker wrote a non-protocol line: %s", line[:200])
                continue
            if isinstance(event, dict) and "event" in event:
                events.put(event)
            else:
                logger.warning("worker wrote JSON that is not an event: %s", line[:200])

    def _read_stderr(self, process: subprocess.Popen) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                logger.debug("worker: %s", line)

    # ------------------------------------------------------------------ requests

    def submit(self, request: Dict[str, Any]) -> int:
        """Send a request (starting the worker if needed); returns its id.

        Raises RuntimeError if a request is already running, OSError if the worker
        cannot be started or written to.
        """
        if self._pending is not None:
            raise RuntimeError("the worker is busy with another request")
        rid = self._next_id
        self._next_id += 1
        line = (json.dumps(dict(request, id=rid)) + "\n").encode("utf-8")
        for attempt in (1, 2):
            self.start()
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
                break
            except OSError as exc:
                # The idle worker may have just timed out and exited: start a new one, once.
                try:
                    self._process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
                if attempt == 2 or self._process.poll() is None:
                    raise OSError(f"could not send the request to the worker ({exc}); {self._last_error_line()}") from exc
                logger.info("worker had exited (exit code %s); starting a new one", self._process.returncode)
                self._reap()
        self._pending = rid
        return rid

    def _drain(self) -> List[Dict[str, Any]]:
        events: List[Dict[str, Any]] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event.get("event") in FINAL_EVENTS and event.get("id") == self._pending:
                self._pending = None
            events.append(event)

    def poll(self) -> List[Dict[str, Any]]:
        """All events received since the last call (never blocks).

        If the worker exits while a request is pending, an ``error`` event for that
        request is appended, with the last line of the worker's log as the reason.
        """
        events = self._drain()
        if self._pending is not None and self._process is not None and self._process.poll() is not None:
            # Let the readers finish so no line written just before exiting is lost.
            for thread in self._threads:
                thread.join(timeout=2.0)
            events.extend(self._drain())
            if self._pending is not None and not self._exit_reported:
                self._exit_reported = True
                code = self._process.returncode
                how = (f"was killed by signal {-code} (out of memory?)" if code is not None and code < 0
                       else f"exited unexpectedly (exit code {code})")
                events.append({
                    "event": "error", "id": self._pending,
                    "message": f"the worker process {how}; {self._last_error_line()}",
                })
                self._pending = None
        return events

    def wait_for(self, rid: int, timeout: Optional[float] = None, interval: float = 0.05) -> List[Dict[str, Any]]:
        """Block until request ``rid`` ends (or ``timeout`` s); returns every event seen meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: List[Dict[str, Any]] = []
        while True:
            seen.extend(self.poll())
            if any(e.get("id") == rid and e.get("event") in FINAL_EVENTS for e in seen):
                return seen
            if deadline is not None and time.monotonic() > deadline:
                return seen
            time.sleep(interval)

    def _last_error_line(self) -> str:
        lines = [ln for ln in self._stderr_tail if ln.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line:
                return "worker log: " + line.strip()[-300:]
        return ("worker log: " + lines[-1].strip()[-300:]) if lines else "the worker wrote no log"

    # ------------------------------------------------------------------ stopping

    def cancel(self) -> None:
        """Kill the worker and every process it started; the next request starts a new one."""
        if self._process is not None and self._process.poll() is None:
            logger.info("killing worker process tree (pid %s)", self._process.pid)
            kill_process_tree(self._process.pid)
        self._reap()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it has not after ``timeout`` seconds."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write(b'{"cmd": "shutdown"}\n')
                process.stdin.flush()
                process.stdin.close()
                process.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                logger.warning("worker did not exit in %.0f s; killing it", timeout)
                kill_process_tree(process.pid)
        self._reap()

    def _reap(self) -> None:
        """Wait for a finished/killed process, close its pipes and forget the pending request."""
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            logger.error("worker pid %s did not exit after being killed", process.pid)
        for thread in self._threads:
            thread.join(timeout=2.0)
        readers_done = not any(thread.is_alive() for thread in self._threads)
        # Closing a pipe while its reader thread is blocked in read() deadlocks on the buffer's
        # lock (a grandchild may still hold the write end open). Leave such pipes to the daemon
        # reader, which ends at EOF; stdin is only ever used from this thread.
        streams = (process.stdin, process.stdout, process.stderr) if readers_done else (process.stdin,)
        for stream in streams:
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass
        if not readers_done:
            logger.warning("worker pid %s: output pipes still open (a child process holds them)", process.pid)
        self._process = None
        self._threads = []
        self._pending = None
        # Events of a dead process must not be mistaken for those of the next one.
        self._events = queue.Queue()


def kill_process_tree(pid: int) -> None:
    """Kill ``pid`` and all its descendants, as reliably as the platform allows."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            procs = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5.0)
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    try:
        # The worker was started with start_new_session, so its pid is its process group id.
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signal.SIGKILL)


def _shutdown_all() -> None:
    """atexit: leave no worker behind when the application exits."""
    for runner in list(_LIVE_RUNNERS):
        try:
            if runner.is_alive:
                runner.cancel() if runner.busy else runner.shutdown(timeout=2.0)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            logger.debug("could not stop worker at exit", exc_info=True)


atexit.register(_shutdown_all)

