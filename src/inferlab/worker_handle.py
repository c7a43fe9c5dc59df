"""The runner's side of a worker process: start it, ask it one thing at a time with a timeout,
stop it. A crash, a hang or an engine error becomes a WorkerError with a one-line reason."""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import sys
import threading
import time

from . import protocol as p
from .worker import PARENT_PID_ENV, PROGRESS, REPLY_FD_ENV


class WorkerError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status  # failed | timeout | skipped (the method does not apply)
        self.message = message


class WorkerHandle:
    def __init__(self, start: p.Start, log_path: str, show=lambda msg: None):
        read_fd, write_fd = os.pipe()
        env = {**os.environ, REPLY_FD_ENV: str(write_fd), PARENT_PID_ENV: str(os.getpid())}
        self.log = open(log_path, "a")
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inferlab.worker"],
                stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.PIPE, text=True,
                pass_fds=(write_fd,), env=env,
                start_new_session=True,  # Ctrl-C reaches the runner only; it then stops us
            )
        finally:
            os.close(write_fd)
        self.replies = read_fd
        self.buffer = b""
        self.reader = threading.Thread(target=self._pump, args=(show,), daemon=True)
        self.reader.start()
        self._send(start)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, show) -> None:
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            if line.startswith(PROGRESS):
                show(line[len(PROGRESS):].strip())
            elif line.strip():
                self.tail.append(line.rstrip())

    def _send(self, message) -> None:
        try:
            self.proc.stdin.write(p.encode(message))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone: the reply read below says why

    def request(self, message, timeout_s: float):
        """Send one request and wait for its reply. Raises WorkerError (the process is then
        killed, except after a Failed reply, when it is still usable)."""
        self._send(message)
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerError("timeout", f"no answer after {timeout_s:.0f} s (timeout); killed")
            ready, _, _ = select.select([self.replies], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                raise WorkerError("failed", self._death())
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply = p.decode(line.decode())
        if isinstance(reply, p.Failed):
            raise WorkerError("skipped" if reply.unsupported else "failed", reply.error)
        return reply

    def _death(self) -> str:
        code = self.proc.wait()
        self.reader.join(5)
        if code < 0:
            why = f"process killed by {signal.Signals(-code).name}"
        else:
            why = f"process exited with code {code}"
        last = self.tail[-1] if self.tail else "no output"
        return f"{why}; last output: {last[:300]}"

    def close(self, grace_s: float = 10.0) -> None:
        """Ask the worker to stop; kill it if it does not within grace_s."""
        if self.proc.poll() is None:
            self._send(p.Stop())
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        self.reader.join(5)
        for stream in (self.proc.stdin,):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        if self.replies is not None:
            os.close(self.replies)
            self.replies = None
        self.log.close()
