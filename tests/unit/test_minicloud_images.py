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

"""The minicloud guest disk's partition table
(tools/minicloud/minicloud_lib/images).

The disk's one partition holds the ext4 file system tempest writes to over
SSH; it must lie where the guest's kernel finds it and end below the
markers.  util-linux's partx reads the table back, as the kernel would.
"""

import subprocess
import tempfile
import unittest

from minicloud_lib import images
from tests.testbed import guest


class MbrTestCase(unittest.TestCase):

    def test_one_linux_partition_below_the_markers(self):
        table = images.mbr(images.DATA_START, images.DATA_SIZE)
        self.assertEqual(512, len(table))
        self.assertEqual(b'\x55\xaa', table[510:])
        self.assertLessEqual(images.DATA_START + images.DATA_SIZE,
                             guest.MARKER_BASE)
        with tempfile.NamedTemporaryFile() as disk:
            disk.write(table)
            disk.truncate(64 * 1024 * 1024)
            disk.flush()
            out = subprocess.run(
                ['partx', '--show', '--noheadings', '--bytes', '--output',
                 'NR,START,SECTORS,TYPE', disk.name],
                capture_output=True, text=True, check=True).stdout
        self.assertEqual([['1', str(images.DATA_START // 512),
                           str(images.DATA_SIZE // 512), '0x83']],
                         [line.split() for line in out.splitlines()])
