"""Telling systemd how the node is doing: the sd_notify protocol, without libsystemd.

The protocol (sd_notify(3)) is one AF_UNIX datagram per notification, holding newline-separated
VARIABLE=value assignments, sent to the socket named by $NOTIFY_SOCKET: a file system path, or
an abstract-namespace name when it starts with "@" (the "@" stands for a leading NUL byte).

    READY=1            startup is finished (Type=notify units wait for it)
    STATUS=text        one line shown by `systemctl status`
    WATCHDOG=1         still alive; must come at least every WatchdogSec=
    STOPPING=1         shutdown has begun
    EXTEND_TIMEOUT_USEC=n  the start or stop takes longer: n more microseconds, please

Without $NOTIFY_SOCKET (not started by systemd, or a unit that is not Type=notify) every call
is a no-op. A failed send never raises into the node: a node that serves requests but cannot
reach systemd should keep serving (if the watchdog pings are lost, systemd acts on that). The
first failure is written to stderr, later ones are only counted, so that a node pinging every
few seconds cannot flood the journal.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

# A full notification queue would block send(); the node's loop must not hang on systemd for
# longer than this. (Not MSG_DONTWAIT: dropping READY=1 on a momentarily full queue would leave
# the unit "activating" until its start timeout.)
SEND_TIMEOUT_S = 1.0


class Notifier:
    """sd_notify for one process. `Notifier()` reads NOTIFY_SOCKET, WATCHDOG_USEC and
    WATCHDOG_PID from the environment once; each method returns whether a datagram was sent.
    """

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        value = env.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(value)
        # Set but unusable: reported once, with the first notification.
        self._bad_value: str | None = value if value and self.address is None else None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None
        self.failures = 0  # sends that failed; only the first one is reported on stderr

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (NOTIFY_SOCKET is set and usable)."""
        return self.address is not None

    # --- the notifications --------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """Startup is finished: the unit becomes active (READY=1, with an optional STATUS)."""
        return self._send("READY=1" + ("" if status is None else "\nSTATUS=" + _line(status)))

    def status(self, text: str) -> bool:
        """Set the one-line status that `systemctl status` shows."""
        return self._send("STATUS=" + _line(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for seconds more before the unit's start or stop timeout kills us (a long
        restore or last snapshot that is making progress): EXTEND_TIMEOUT_USEC=."""
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> bool:
        """Keep-alive ping; send one every watchdog_interval_s()."""
        return self._send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (STOPPING=1, with an optional STATUS)."""
        return self._send("STOPPING=1" + ("" if status is None else "\nSTATUS=" + _line(status)))

    def watchdog_interval_s(self) -> float | None:
        """How often to call watchdog(): half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
        advises, so that one late ping does not get the node killed. None when the watchdog
        is off, or is meant for another process (WATCHDOG_PID set to a pid that is not ours,
        as when a wrapper script started us)."""
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 2e6 if usec > 0 else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------------
    def _send(self, message: str) -> bool:
        if self._bad_value is not None:
            self._report(f"NOTIFY_SOCKET={self._bad_value!r} is not an absolute path or @name; "
                         "not notifying systemd")
            self._bad_value = None
        if self.address is None:
            return False
        try:
            if self._sock is None:
                # One socket for the process's lifetime (close-on-exec, as Python makes every
                # socket): the watchdog pings every few seconds.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT_S)
            # "replace": a lone surrogate in a status text must not raise into the node
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
            return True
        except (OSError, ValueError) as exc:
            self.failures += 1
            if self.failures == 1:
                self._report(f"cannot notify systemd at {self.address!r}: {exc}; "
                             "further failures are not reported")
            return False

    @staticmethod
    def _report(message: str) -> None:
        try:
            print(f"shmkv: sd_notify: {message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr closed: there is nobody left to tell
            pass


def _socket_address(value: str) -> str | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None when notifications are off.
    Only absolute paths and "@" names are valid (as in libsystemd); systemd 253+ may also pass
    "vsock:CID:PORT", for VMs, which this node does not support."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None


def _line(text: str) -> str:
    """STATUS= is one line: a newline would start a new (bogus) assignment."""
    return " ".join(text.splitlines())
