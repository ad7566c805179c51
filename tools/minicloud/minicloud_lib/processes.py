# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Processes: one process group per service, found again by pid file.

Running a set-up command into the service's log, starting a long-running
service in its own session, finding and stopping it by process group,
waiting for it to answer, checking ports, reading the tail of its log or a
CRITICAL line in it, and finding the cloud's stray processes (those that
left their service's process group).
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import COMPUTE_CONF
from minicloud_lib.config import HOST
from minicloud_lib.config import log
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import path
from minicloud_lib.config import SERVICES
from minicloud_lib.config import START_TIMEOUT
from minicloud_lib.config import STATE
from minicloud_lib.config import STOP_TIMEOUT
from minicloud_lib.config import VENV


def log_tail(name, lines=40):
    try:
        with open(path('log', name + '.log'), errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except FileNotFoundError:
        return '(no log)'


def run(cmd, name, env=None, timeout=CALL_TIMEOUT, input=None):
    """Run a set-up command; its output goes to log/<name>.log."""
    with open(path('log', name + '.log'), 'a') as out:
        out.write('\n$ %s\n' % ' '.join(cmd))
        out.flush()
        try:
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise MinicloudError('%s: timed out after %ss: %s\n%s'
                                 % (name, timeout, ' '.join(cmd),
                                    log_tail(name)))
    if res.returncode:
        raise MinicloudError('%s: exit %d: %s\n%s'
                             % (name, res.returncode, ' '.join(cmd),
                                log_tail(name)))


def start(name, cmd, env=None, cwd=STATE):
    """Start a long-running service in its own session (process group)."""
    out = open(path('log', name + '.log'), 'a')
    with out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=cwd)
    with open(path('run', name + '.pid'), 'w') as f:
        f.write('%d\n' % proc.pid)
    return proc


def pid_of(name):
    """The pid (== process group id) of a service we started, if alive."""
    try:
        with open(path('run', name + '.pid')) as f:
            pid = int(f.read())
    except (FileNotFoundError, ValueError):
        return None
    # A service that died as our own child stays a zombie, which killpg
    # would still find, until it is reaped.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop(*names):
    """Stop services by process group: SIGTERM to all, SIGKILL later.

    Returns the names of those that were running.
    """
    pids = {name: pid_of(name) for name in names}
    pids = {name: pid for name, pid in pids.items() if pid is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(map(pid_of, pids)):
        time.sleep(0.2)
    for name, pid in pids.items():
        if pid_of(name):
            log('%s ignored SIGTERM for %ss; SIGKILL', name, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path('run', name + '.pid'))
    return [name for name in names if name in pids]


def wait_for(what, check, timeout=START_TIMEOUT, service=None):
    deadline = time.monotonic() + timeout
    while True:
        if service and not pid_of(service):
            raise MinicloudError('%s exited while starting:\n%s'
                                 % (service, log_tail(service)))
        try:
            if check():
                return
        except Exception:  # noqa: S110 (not up yet; keep polling)
            pass
        if time.monotonic() > deadline:
            raise MinicloudError('%s: not ready after %ss\n%s'
                                 % (what, timeout,
                                    log_tail(service) if service else ''))
        time.sleep(0.5)


def http_answers(address):
    """True once something answers HTTP there (any status code)."""
    try:
        urllib.request.urlopen(address, timeout=5).close()
    except urllib.error.HTTPError:
        pass
    return True


def port_open(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((HOST, port)) == 0


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def critical_in_log(name):
    with open(path('log', name + '.log'), errors='replace') as f:
        return any(' CRITICAL ' in line for line in f)


def running():
    return [s for s in SERVICES if pid_of(s)]


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open('/proc/%d/stat' % pid) as f:
                pid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def stray_processes():
    """Processes that run the cloud's code or use its state directory.

    Returns (pid, command line) pairs; this process and its parents are
    left out.
    """
    marks = (STATE + os.sep, os.path.join(VENV, 'bin') + os.sep,
             COMPUTE_CONF)
    mine = _ancestors()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    'utf-8', 'replace').strip()
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append((int(entry), cmdline))
    return found
