"""The bench's CPU pinning (tools/bench_pin.py) and how the report says it.

The pinning is checked on a real child process with a second thread: every
one of its threads must end up on the CPU given, as the kernel reports it.
"""

import os
import subprocess
import sys
import time
import types
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'tools')
if TOOLS not in sys.path:
    sys.path.append(TOOLS)
import bench_pin  # noqa: E402
import bench_report  # noqa: E402

# A child with two threads that waits for its stdin to close.
CHILD = '''
import sys, threading
threading.Thread(target=sys.stdin.read, daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
'''


def thread_ids(pid):
    return [int(t) for t in os.listdir('/proc/%d/task' % pid)]


class PinProcessTestCase(unittest.TestCase):

    def test_every_thread_of_a_process_is_pinned(self):
        cpu = min(os.sched_getaffinity(0))
        child = subprocess.Popen([sys.executable, '-c', CHILD],
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual('ready\n', child.stdout.readline())
            deadline = time.monotonic() + 10
            while len(thread_ids(child.pid)) < 2:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
            self.assertTrue(bench_pin.pin_process(child.pid, {cpu}))
            for tid in thread_ids(child.pid):
                self.assertEqual({cpu}, os.sched_getaffinity(tid))
        finally:
            child.stdin.close()
            child.wait(timeout=10)

    def test_a_process_that_is_gone_is_reported(self):
        child = subprocess.Popen(['true'])
        child.wait()
        self.assertFalse(bench_pin.pin_process(child.pid, {0}))


class PinningTestCase(unittest.TestCase):

    def test_a_cpu_this_process_may_not_use_is_refused(self):
        cpu = max(os.sched_getaffinity(0)) + 1
        with self.assertRaises(ValueError) as ctx:
            bench_pin.Pinning(cpu)
        self.assertIn('--pin-glance %d' % cpu, str(ctx.exception))

    def test_glance_alone_on_its_cpu_the_rest_on_the_others(self):
        online = os.sched_getaffinity(0)
        if len(online) < 2:
            self.assertRaises(ValueError, bench_pin.Pinning, min(online))
            return
        pinning = bench_pin.Pinning(min(online))
        self.assertEqual({min(online)}, pinning.glance)
        self.assertEqual(online - {min(online)}, pinning.others)
        self.assertIn('glance-api on CPU %d' % min(online),
                      pinning.describe())


class PinningNoteTestCase(unittest.TestCase):

    def test_the_report_says_where_glance_ran(self):
        note = bench_report.pinning_note(types.SimpleNamespace(pin_glance=0))
        self.assertIn('glance-api on CPU 0 alone', note)

    def test_no_note_without_pinning_or_from_older_runs(self):
        self.assertEqual('', bench_report.pinning_note(
            types.SimpleNamespace(pin_glance=None)))
        self.assertEqual('', bench_report.pinning_note(
            types.SimpleNamespace()))
