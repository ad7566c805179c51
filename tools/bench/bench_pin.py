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

"""CPU pinning for the benchmark (tools/bench/bench.py --pin-glance CPU).

What this holds: ``Pinning``, which puts glance-api (its whole process
group, every thread) on one CPU and everything else the bench runs on the
others: the bench process (the driver, its reading thread, hashing,
glanceclient), the instance's QEMU (the guest and the NBD export) and
libvirtd.

Why: on two cores an upload to the bench's Glance is about one core of
glance-api's work, and a stream adds about half a core of its own on the
same two cores (the CPU columns of the 4 GiB run committed on
2026-11-30, doc/benchmark/2026-11-30-4g-instance-cpu).  Pinned, Glance has
a core to itself in both the stream and the Glance-alone floor, while the
bench, QEMU and libvirtd share the other: closer to a Glance on a host of
its own, as a cloud runs it, but not the same (doc/source/benchmark.rst,
known limits).

Affinity is per thread on Linux: each task under /proc/PID/task is
pinned; threads started later inherit their creator's.  glance-api, the
instances and the bench end with the run; libvirtd is shared with every
other tier, so ``restore()`` gives it back the CPUs it had.
"""

import os


def pin_process(pid, cpus):
    """Pin every thread of process ``pid`` to ``cpus``; False if gone."""
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except FileNotFoundError:
        return False
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
    return True


class Pinning(object):
    """Glance on ``glance_cpu``, the rest of the bench on the other CPUs."""

    def __init__(self, glance_cpu):
        online = os.sched_getaffinity(0)
        if glance_cpu not in online or len(online) < 2:
            raise ValueError('--pin-glance %d: needs that CPU and another '
                             '(this process may use %s)'
                             % (glance_cpu, sorted(online)))
        self.glance = {glance_cpu}
        self.others = online - self.glance
        self._libvirtd = None  # (pid, its affinity before pin_bench)

    def describe(self):
        return ('glance-api on CPU %s; the bench, QEMU and libvirtd on %s'
                % (','.join(map(str, sorted(self.glance))),
                   ','.join(map(str, sorted(self.others)))))

    def pin_bench(self, glance_pids, libvirtd_pid):
        """Pin glance-api's processes, this process and libvirtd."""
        if not glance_pids:
            raise RuntimeError('glance-api is not running')
        if libvirtd_pid is None:
            raise RuntimeError('libvirtd is not running')
        for pid in glance_pids:
            pin_process(pid, self.glance)
        pin_process(os.getpid(), self.others)
        self._libvirtd = (libvirtd_pid, os.sched_getaffinity(libvirtd_pid))
        pin_process(libvirtd_pid, self.others)

    def restore(self):
        """Give libvirtd, which outlives the bench, its CPUs back."""
        if self._libvirtd is not None:
            pin_process(*self._libvirtd)
            self._libvirtd = None

    def pin_qemu(self, pid):
        """Pin an instance's QEMU, once it runs."""
        if not pin_process(pid, self.others):
            raise RuntimeError('QEMU (pid %d) is not running' % pid)
