"""Helpers of the serving tests (tests/test_server.py, the SmolLM2 slow tests): `mcq serve` in a
subprocess on a free port, and `mcq chat` in a real terminal (tmux)."""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time

import pytest


@contextlib.contextmanager
def served(path, *args):
    """`mcq serve PATH` on a free port of 127.0.0.1; yields its base URL and the process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcq.cli", "serve", str(path), "--port", "0",
                             "--log-level", "warning", *args], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 120
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, f"the server did not start: {''.join(lines)}"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


class Tmux:
    """A detached tmux session running one command: keys in, the screen's text out."""

    def __init__(self, command: list[str], name: str) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.name = name
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "60",
                        " ".join(map(shlex.quote, command))], check=True, env={**os.environ, "TERM": "xterm"})

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def wait_for(self, predicate, timeout: float = 60.0, every: float = 0.05) -> list[str]:
        """Screens seen until predicate(screen) holds (all of them: streaming shows in between)."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen.append(self.screen())
            if predicate(seen[-1]):
                return seen
            time.sleep(every)
        raise AssertionError(f"timed out; the screen:\n{seen[-1] if seen else ''}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _prompts(screen: str) -> int:
    return sum(1 for line in screen.splitlines() if line.startswith("> "))


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c != "\ufffd")


def chat_in_tmux(path, message: str, expected: str, max_new_tokens: int) -> list[str]:
    """`mcq chat` in tmux: a message, its reply, /reset, /exit; returns the screens seen during
    the reply. The reply's printable characters must be on screen after the message."""
    term = Tmux([sys.executable, "-m", "mcq.cli", "chat", str(path), "--max-new-tokens", str(max_new_tokens)],
                f"mcq-chat-{os.getpid()}")
    try:
        term.wait_for(lambda s: _prompts(s) == 1)
        term.type(message)
        screens = term.wait_for(lambda s: _prompts(s) == 2)
        final = screens[-1]
        after = final[final.index(f"> {message}") + len(message) + 2:]
        reply = after[: after.rindex("\n> ")].replace("\n", "")
        assert _printable(reply).strip() == _printable(expected.replace("\n", "")).strip()
        term.type("/reset")
        term.wait_for(lambda s: "(conversation reset)" in s and _prompts(s) == 3)
        term.type("/exit")
        deadline = time.monotonic() + 10
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not term.alive()
        return screens
    finally:
        term.close()
