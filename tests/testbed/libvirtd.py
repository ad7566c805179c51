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

"""A real libvirtd + QEMU for functional tests, on a machine without systemd.

The functional tests talk to the system libvirtd (``qemu:///system``).  No
init system runs here, so this module starts ``virtlogd`` and ``libvirtd``
itself and finds them again through their pid files in /run.

QEMU runs as distributions ship it: as the unprivileged ``libvirt-qemu``
(qemu.conf's ``user`` and ``group`` unset, ``dynamic_ownership`` on), so
every tier proves that QEMU reaches what a snapshot hands it.  A ``user``
or ``group`` line in qemu.conf (an earlier test bed set QEMU to root) is
commented out.  /dev/kvm is made ``root:kvm`` 0660, as udev makes it: one
that only root may open makes libvirt's capability cache flip between
"KVM" and "no KVM", and every defineXML then takes about 36 s while QEMU
is re-probed.

Missing daemons are an error, never a reason to skip: a functional test
that silently does not run proves nothing.
"""

import collections
import grp
import logging
import os
import re
import signal
import stat
import subprocess
import time

import libvirt

LOG = logging.getLogger(__name__)

URI = 'qemu:///system'
QEMU_CONF = '/etc/libvirt/qemu.conf'
DAEMONS = ('virtlogd', 'libvirtd')  # start order; libvirtd needs virtlogd
START_TIMEOUT = 30
STOP_TIMEOUT = 15

Info = collections.namedtuple(
    'Info', 'uri libvirt_version qemu_version started reconfigured')


def virt_type():
    """Domain type for test guests.

    'qemu' (TCG) by default: nested KVM is not dependable on the test
    machines, TCG always is.  SNAPDRIVER_TEST_VIRT_TYPE overrides it.
    """
    return os.environ.get('SNAPDRIVER_TEST_VIRT_TYPE') or 'qemu'


def _pid_file(name):
    return '/run/%s.pid' % name


def _alive(pid, name):
    """True if `pid` is a running (not zombie) process called `name`."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) state ..."; comm may itself hold spaces or parentheses.
    comm = stat[stat.index('(') + 1:stat.rindex(')')]
    state = stat[stat.rindex(')') + 2:].split()[0]
    # A stale pid file may name a pid that now belongs to someone else.
    return comm == name and state not in ('Z', 'X')


def _pid(name):
    """Pid of a live daemon `name` according to its pid file, else None."""
    try:
        with open(_pid_file(name)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, name) else None


def pid():
    """libvirtd's pid if it runs, else None."""
    return _pid('libvirtd')


def _start(name):
    LOG.info('starting %s -d', name)
    subprocess.run([name, '-d'], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(name):
    """SIGTERM the daemon named by its pid file, SIGKILL if it lingers."""
    pid = _pid(name)
    if pid is None:
        return
    LOG.info('stopping %s (pid %d)', name, pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _alive(pid, name):
                return
            time.sleep(0.1)
        LOG.warning('%s (pid %d) still there after signal %s',
                    name, pid, sig.name)
    raise RuntimeError('cannot stop %s (pid %d)' % (name, pid))


# The user and group QEMU runs as on Debian when qemu.conf sets neither.
QEMU_USER = 'libvirt-qemu'
QEMU_GROUP = 'libvirt-qemu'
KVM_DEVICE = '/dev/kvm'
KVM_GROUP = 'kvm'
SHIPPED_MARK = '# commented out by the nova-snapdriver test bed: '


def _ensure_qemu_as_shipped(path=QEMU_CONF):
    """Comment out qemu.conf's ``user``/``group``; True if it changed.

    The file is edited in place; comments and everything else stay.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    active = re.compile(r'^\s*(user|group)\s*=')
    changed = False
    kept = []
    for line in lines:
        if line.strip() == '# set by the nova-snapdriver test bed':
            changed = True  # an earlier test bed's marker
            continue
        if active.match(line):
            LOG.info('commenting out %r in %s', line.strip(), path)
            line = SHIPPED_MARK + line
            changed = True
        kept.append(line)
    if changed:
        with open(path, 'w') as f:
            f.write('\n'.join(kept) + '\n')
    return changed


def _ensure_kvm_device(path=KVM_DEVICE):
    """/dev/kvm as udev sets it up: root:kvm 0660 (if there is one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    gid = grp.getgrnam(KVM_GROUP).gr_gid
    if st.st_gid != gid or stat.S_IMODE(st.st_mode) != 0o660:
        LOG.info('making %s root:%s 0660', path, KVM_GROUP)
        os.chown(path, 0, gid)
        os.chmod(path, 0o660)


def _connect():
    return libvirt.open(URI)


def _wait_for_connection(timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _connect()
        except libvirt.libvirtError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    'libvirtd did not answer on %s within %d s: %s'
                    % (URI, timeout, e)) from e
            time.sleep(0.2)


def _version(number):
    major, rest = divmod(number, 1000000)
    return '%d.%d.%d' % (major, rest // 1000, rest % 1000)


def _versions(conn):
    return _version(conn.getLibVersion()), _version(conn.getVersion())


def ensure_running():
    """Make sure virtlogd and libvirtd run, QEMU as shipped.  Idempotent.

    Returns an Info tuple.  Raises RuntimeError if libvirtd cannot be
    started or does not answer in time.
    """
    _ensure_kvm_device()
    reconfigured = _ensure_qemu_as_shipped()
    if reconfigured and _pid('libvirtd'):
        # qemu.conf is read only at start-up.
        _stop('libvirtd')
    started = []
    for name in DAEMONS:
        if _pid(name) is None:
            try:
                _start(name)
            except (OSError, subprocess.CalledProcessError) as e:
                err = getattr(e, 'stderr', b'') or b''
                raise RuntimeError('cannot start %s: %s %s'
                                   % (name, e, err.decode(errors='replace')))
            started.append(name)
    conn = _wait_for_connection()
    try:
        lib, qemu = _versions(conn)
    finally:
        conn.close()
    LOG.info('libvirtd ready: libvirt %s, QEMU %s (started: %s)',
             lib, qemu, ', '.join(started) or 'none')
    return Info(URI, lib, qemu, tuple(started), reconfigured)


def versions():
    """(libvirt version, QEMU version) as strings, e.g. ('9.0.0', '7.2.0')."""
    try:
        conn = _connect()
    except libvirt.libvirtError as e:
        raise RuntimeError('libvirtd does not answer on %s: %s'
                           % (URI, e)) from e
    try:
        return _versions(conn)
    finally:
        conn.close()


def kill():
    """SIGKILL libvirtd, as an OOM kill or a crash would; wait until gone.

    Its QEMU processes keep running; a libvirtd started again reconnects
    to them.  Returns the pid that was killed.
    """
    pid = _pid('libvirtd')
    if pid is None:
        raise RuntimeError('libvirtd is not running')
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid, 'libvirtd'):
        if time.monotonic() > deadline:
            raise RuntimeError('libvirtd (pid %d) survived SIGKILL' % pid)
        time.sleep(0.05)
    LOG.info('killed libvirtd (pid %d)', pid)
    return pid


class Connection(object):
    """A libvirt connection that opens itself again after libvirtd restarts.

    The tests' session-wide connection: a test that kills libvirtd must
    not leave every later test with a dead one.  Domain objects taken
    from the old connection stay dead; look domains up again.
    """

    def __init__(self):
        self._conn = _connect()

    def _alive(self):
        try:
            self._conn.getLibVersion()
            return True
        except libvirt.libvirtError:
            return False

    def __getattr__(self, name):
        attr = getattr(self._conn, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            # libvirt notices a dead socket only when it next uses it.
            try:
                return getattr(self._conn, name)(*args, **kwargs)
            except libvirt.libvirtError:
                if self._alive():
                    raise
            self._conn = _wait_for_connection()
            return getattr(self._conn, name)(*args, **kwargs)
        return call

    def close(self):
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass


def stop():
    """Stop libvirtd, then virtlogd, found through their pid files.

    Running guests are left to libvirt's shutdown handling; callers
    should have destroyed their domains first.
    """
    for name in reversed(DAEMONS):
        _stop(name)
