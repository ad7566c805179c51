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

"""The bench's CPU accounting: seconds per process, from /proc.

``CpuMeter`` counts, between its start and stop, glance-api's process
group, the instance's QEMU (each of them, if a managed save replaces it),
and the bench's own process with the children
it waited for.  Nothing here needs nova: the unit tier runs it on every
nova release it supports.
"""

import os


def _proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name, or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pids_where(field, value):
    """The pids whose /proc stat ``field`` (after the name) is ``value``."""
    pids = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            fields = _proc_stat(int(name))
            if fields and int(fields[field]) == value:
                pids.append(int(name))
    return pids


def group_pids(pgid):
    """The pids of the processes in process group ``pgid``."""
    return _pids_where(2, pgid)


def child_pids(ppid):
    """The pids of the processes whose parent is ``ppid``."""
    return _pids_where(1, ppid)


def cpu_seconds(pids):
    """CPU seconds (user + system) the processes ``pids`` used so far."""
    ticks = 0
    for pid in pids:
        fields = _proc_stat(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf('SC_CLK_TCK')


class CpuMeter(object):
    """CPU seconds used between start() and stop(), per party.

    ``glance``: glance-api's process group; ``qemu``: the instance's QEMU
    (the block copy or backup, reading the disk for the NBD export, and
    the idle guest); ``ours``: this process and the children it waited
    for (the driver, its reading thread and hashing, the ``qemu-img``
    and ``qemu-nbd`` it runs, nova in-tree's ``qemu-img convert``; or,
    for a floor, glanceclient or nova's image API sending the file);
    ``host``: ``qemu`` + ``ours``, what the snapshot took from the
    compute host.  On two cores these share the machine with Glance's
    worker, which sets the pace of every upload.  Runs from before
    2026-12-07 have no ``host`` and left the children out of ``ours``.

    ``qemu_pid`` says which QEMU runs the instance now (None: none, a
    shut-off domain).  A managed save (``[workarounds]
    disable_libvirt_livesnapshot``) ends the QEMU and starts another:
    ``sample()``, called often while it runs, keeps each QEMU's seconds
    up to its last sample (what it used after that is lost), and a QEMU
    first seen after start() counts from zero.
    """

    def __init__(self, bench, qemu_pid=None):
        self._glance = group_pids(bench.glance_pgid)
        self._qemu_pid = qemu_pid or (lambda: None)
        self._qemu = {}  # pid: [seconds at first sight, at last sight]
        self._started = False
        self.used = None

    def sample(self):
        """Note the seconds of the QEMU running now, if any."""
        pid = self._qemu_pid()
        fields = _proc_stat(pid) if pid is not None else None
        if fields is None:
            return
        now = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        seen = self._qemu.setdefault(pid, [now if not self._started
                                           else 0.0, now])
        seen[1] = now

    def _now(self):
        times = os.times()
        return {'glance': cpu_seconds(self._glance),
                'ours': (times.user + times.system +
                         times.children_user + times.children_system)}

    def start(self):
        self.sample()
        self._started = True
        self._start = self._now()

    def stop(self):
        end = self._now()
        self.sample()
        self.used = {k: end[k] - self._start[k] for k in end}
        self.used['qemu'] = sum(last - first
                                for first, last in self._qemu.values())
        self.used['host'] = self.used['qemu'] + self.used['ours']
