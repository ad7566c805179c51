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

"""The bench's CPU pinning (tools/bench/bench_pin.py) and how the report says
it.

The pinning is checked on a real child process with a second thread: every
one of its threads must end up on the CPU given, as the kernel reports it.
"""

import contextlib
import os
import subprocess
import sys
import time
import types
import unittest

import bench_pin
import bench_report

# A child with two threads that waits for its stdin to close.
CHILD = '''
import sys, threading
threading.Thread(target=sys.stdin.read, daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
'''


def thread_ids(pid):
    return [int(t) for t in os.listdir('/proc/%d/task' % pid)]


@contextlib.contextmanager
def two_thread_child():
    """A child process once both its threads run; ended on exit."""
    child = subprocess.Popen([sys.executable, '-c', CHILD],
                             stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline() != 'ready\n':
            raise RuntimeError('the child did not start')
        deadline = time.monotonic() + 10
        while len(thread_ids(child.pid)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError('the child has no second thread')
            time.sleep(0.01)
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def pinning(test):
    """Pinning(first CPU); None on one CPU, where it must be refused."""
    online = os.sched_getaffinity(0)
    if len(online) < 2:
        test.assertRaises(ValueError, bench_pin.Pinning, min(online))
        return None
    return bench_pin.Pinning(min(online))


class PinProcessTestCase(unittest.TestCase):

    def test_every_thread_of_a_process_is_pinned(self):
        cpu = min(os.sched_getaffinity(0))
        with two_thread_child() as child:
            self.assertTrue(bench_pin.pin_process(child.pid, {cpu}))
            for tid in thread_ids(child.pid):
                self.assertEqual({cpu}, os.sched_getaffinity(tid))

    def test_a_process_that_is_gone_is_reported(self):
        child = subprocess.Popen(['true'])
        child.wait()
        self.assertFalse(bench_pin.pin_process(child.pid, {0}))

    def test_restore_gives_a_process_its_cpus_back(self):
        online = os.sched_getaffinity(0)
        pins = pinning(self)
        if pins is None:
            return
        with two_thread_child() as child:
            # As pin_bench does for libvirtd, without pinning this process.
            pins._libvirtd = (child.pid, os.sched_getaffinity(child.pid))
            bench_pin.pin_process(child.pid, pins.others)
            pins.restore()
            for tid in thread_ids(child.pid):
                self.assertEqual(online, os.sched_getaffinity(tid))


class PinningTestCase(unittest.TestCase):

    def test_a_cpu_this_process_may_not_use_is_refused(self):
        cpu = max(os.sched_getaffinity(0)) + 1
        with self.assertRaises(ValueError) as ctx:
            bench_pin.Pinning(cpu)
        self.assertIn('--pin-glance %d' % cpu, str(ctx.exception))

    def test_glance_alone_on_its_cpu_the_rest_on_the_others(self):
        online = os.sched_getaffinity(0)
        pins = pinning(self)
        if pins is None:
            return
        self.assertEqual({min(online)}, pins.glance)
        self.assertEqual(online - {min(online)}, pins.others)
        self.assertIn('glance-api on CPU %d' % min(online),
                      pins.describe())

    def test_nothing_is_pinned_without_glance_or_libvirtd(self):
        before = os.sched_getaffinity(0)
        pins = pinning(self)
        if pins is None:
            return
        with self.assertRaisesRegex(RuntimeError, 'glance-api'):
            pins.pin_bench([], os.getppid())
        with self.assertRaisesRegex(RuntimeError, 'libvirtd'):
            pins.pin_bench([os.getppid()], None)
        self.assertEqual(before, os.sched_getaffinity(0))


class PinningNoteTestCase(unittest.TestCase):

    def test_the_report_says_where_glance_ran(self):
        note = bench_report.pinning_note(types.SimpleNamespace(pin_glance=0))
        self.assertIn('glance-api on CPU 0 alone', note)

    def test_no_note_without_pinning_or_from_older_runs(self):
        self.assertEqual('', bench_report.pinning_note(
            types.SimpleNamespace(pin_glance=None)))
        self.assertEqual('', bench_report.pinning_note(
            types.SimpleNamespace()))

    def test_the_report_says_glance_hashed_with_another_algorithm(self):
        note = bench_report.pinning_note(types.SimpleNamespace(
            pin_glance=None, glance_hash='sha256'))
        self.assertIn('hashing_algorithm is sha256', note)
        self.assertEqual('', bench_report.pinning_note(
            types.SimpleNamespace(pin_glance=None, glance_hash='sha512')))
