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

"""tools/bench/bench_measure.py: what stands in for the driver's own functions.

The bench's "read alone" case replaces ``upload.upload_file`` while a real
stream runs; a stand-in whose arguments drifted from the driver's call
fails that case only when the bench runs, long after the change.
"""

import inspect
import io
import subprocess
import sys
import types
from unittest import mock

import bench_measure

from nova_snapdriver import upload
from tests.unit import base


class ReadToNowhereTestCase(base.TestCase):

    def test_takes_what_upload_file_takes(self):
        self.assertEqual(inspect.signature(upload.upload_file),
                         inspect.signature(bench_measure.read_to_nowhere))

    def test_reads_the_whole_stream_and_hashes_as_asked(self):
        data = io.BytesIO(b'x' * (3 * base.MiB + 5))
        hashing = mock.patch.object(upload, 'HashingReader',
                                    wraps=upload.HashingReader)
        with hashing as reader_class:
            bench_measure.read_to_nowhere(
                None, self.context, base.IMAGE_ID, {}, data,
                3 * base.MiB + 5, self.make_instance(), take_disk_ops=False,
                hashes=('sha256',))

        self.assertEqual(3 * base.MiB + 5, data.tell())
        self.assertEqual(('sha256',), reader_class.call_args.args[2])


class CpuMeterTestCase(base.TestCase):

    def test_counts_the_children_it_waited_for(self):
        meter = bench_measure.CpuMeter(types.SimpleNamespace(glance_pgid=-1))
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
