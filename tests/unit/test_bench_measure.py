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

"""tools/bench: its stand-in for the driver's upload, and its CPU meter.

The bench's "read alone" case replaces ``upload.upload_file`` while a real
stream runs; a stand-in whose arguments drifted from the driver's call
fails that case only when the bench runs, long after the change.  It is
read from the source: bench_measure imports the functional test bed,
which is nova 34's, and this tier runs on nova 31 too.  The CPU meter must
count what the bench's children burn: nova in-tree's ``qemu-img convert``
is one.
"""

import ast
import inspect
import os
import subprocess
import sys
import types
from unittest import mock

import bench_cpu

from nova_snapdriver import upload
from tests.unit import base

BENCH_MEASURE = os.path.join(os.path.dirname(bench_cpu.__file__),
                             'bench_measure.py')


def arguments(source, function):
    """(name, default source or None) of each argument of ``function``."""
    tree = ast.parse(source)
    [node] = [n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == function]
    args = node.args.args
    defaults = [None] * (len(args) - len(node.args.defaults)) + [
        ast.unparse(d) for d in node.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


class ReadToNowhereTestCase(base.TestCase):

    def test_takes_what_upload_file_takes(self):
        with open(BENCH_MEASURE) as f:
            theirs = arguments(f.read(), 'read_to_nowhere')
        with open(inspect.getsourcefile(upload)) as f:
            ours = arguments(f.read(), 'upload_file')

        self.assertEqual(ours, [(name, default and default.replace(
            'upload.', '')) for name, default in theirs])


class CpuMeterTestCase(base.TestCase):

    def test_counts_the_children_it_waited_for(self):
        meter = bench_cpu.CpuMeter(types.SimpleNamespace(glance_pgid=-1))
        meter.start()
        # A child that burns half a CPU second, then is reaped.
        subprocess.run([sys.executable, '-c',
                        'import time\n'
                        'end = time.process_time() + 0.5\n'
                        'while time.process_time() < end: pass'],
                       check=True)
        meter.stop()

        self.assertGreaterEqual(meter.used['ours'], 0.4)
        self.assertEqual(meter.used['qemu'] + meter.used['ours'],
                         meter.used['host'])
        self.assertEqual(0, meter.used['glance'])

    def test_a_qemu_a_managed_save_replaces_is_counted_to_its_last_sample(
            self):
        tick = os.sysconf('SC_CLK_TCK')
        # pid: utime ticks now; 0 stime.  QEMU 10 runs, then 20 does.
        ticks = {10: 5 * tick}
        running = [10]

        def stat(pid):
            if pid not in ticks:
                return None
            return ['0'] * 11 + [str(ticks[pid]), '0']
        with mock.patch.object(bench_cpu, '_proc_stat', stat):
            meter = bench_cpu.CpuMeter(types.SimpleNamespace(glance_pgid=-1),
                                       qemu_pid=lambda: running[0])
            meter.start()
            ticks[10] = 7 * tick   # 2 s during the snapshot
            meter.sample()
            del ticks[10]          # saved: that QEMU is gone
            running[0] = None
            meter.sample()
            ticks[20] = 1 * tick   # restored: a new QEMU, 1 s since it began
            running[0] = 20
            meter.stop()

        self.assertEqual(3.0, meter.used['qemu'])
        self.assertEqual(meter.used['qemu'] + meter.used['ours'],
                         meter.used['host'])
