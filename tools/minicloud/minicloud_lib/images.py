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

"""The guest images and flavors ``up`` puts into the cloud.

The tiny guest built offline (a Debian cloud kernel, a busybox initramfs
and a small qcow2 disk, see tests/testbed/guest.py), then the flavors and
the images in Glance: ``minicloud-kernel`` (aki), ``minicloud-ramdisk``
(ari) and three disk images that differ only by their kernel command line
(IMAGES): ``minicloud-idle``, ``minicloud-markers`` and ``minicloud-ssh``,
tempest's, whose root home is the ext4 file system on the disk's first
partition (so what a test writes over SSH is in the disk).

The disk: an MBR whose one partition (DATA_START, DATA_SIZE) holds that
file system, recognisable text in the rest of the first MiB, all below
the markers (tests/testbed/guest.py's MARKER_BASE).  Only ``snapdata=1``
mounts it: the other two images' guests never change those bytes, as the
e2e tests check.
"""

import os
import shutil
import struct
import subprocess

from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import FLAVORS
from minicloud_lib.config import GUEST_CACHE
from minicloud_lib.config import GUEST_CMDLINE
from minicloud_lib.config import GUEST_DISK_MIB
from minicloud_lib.config import path
from minicloud_lib.processes import run
from minicloud_lib.services import openstack
from tests.testbed import guest as test_guest


MIB = 1024 * 1024
DATA_START = 16 * MIB
DATA_SIZE = 16 * MIB
# name: the kernel command line's mode and flags
IMAGES = {
    'minicloud-idle': 'snapmode=idle',
    'minicloud-markers': 'snapmode=markers',
    'minicloud-ssh': 'snapmode=idle snapdata=1',
}


def mbr(start, size, sector=512):
    """A DOS partition table with one Linux partition (start, size bytes)."""
    # Status, CHS start (unused: LBA), type 0x83, CHS end, LBA start, count.
    entry = struct.pack('<B3sB3sII', 0, b'\xfe\xff\xff', 0x83,
                        b'\xfe\xff\xff', start // sector, size // sector)
    return entry.rjust(446 + 16, b'\0').ljust(510, b'\0') + b'\x55\xaa'


def build_guest_images():
    """The tiny guest: kernel, initramfs and a qcow2 disk, made offline."""
    assert DATA_START + DATA_SIZE <= test_guest.MARKER_BASE
    kernel, initrd = test_guest.build_boot_files(GUEST_CACHE)
    shutil.copy(kernel, path('images', 'vmlinuz'))
    shutil.copy(initrd, path('images', 'initrd.gz'))
    raw = path('images', 'disk.raw')
    with open(raw, 'wb') as f:
        # Recognisable data below the markers region: the image's own.
        f.write(b''.join(b'MINICLOUD BASE IMAGE BLOCK %08d\n' % i
                         for i in range(32 * 1024)).ljust(MIB, b'.'))
        f.truncate(GUEST_DISK_MIB * MIB)
        f.seek(0)
        f.write(mbr(DATA_START, DATA_SIZE))
    # ext4, as a guest's disk has: a live snapshot taken while it is
    # mounted replays its journal in the clone.
    run(['mke2fs', '-t', 'ext4', '-q', '-F', '-L', 'snapdata',
         '-E', 'offset=%d' % DATA_START, raw, '%dk' % (DATA_SIZE // 1024)],
        'images')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    path('images', 'disk.qcow2')], check=True,
                   timeout=CALL_TIMEOUT)
    os.unlink(raw)


def create_flavors_and_images():
    for name, ram, disk, vcpus in FLAVORS:
        openstack('flavor', 'create', '--ram', str(ram), '--disk', str(disk),
                  '--vcpus', str(vcpus), '--public', name)
    kernel = openstack('image', 'create', '--public', '--disk-format', 'aki',
                       '--container-format', 'aki', '--file',
                       path('images', 'vmlinuz'), 'minicloud-kernel')
    ramdisk = openstack('image', 'create', '--public', '--disk-format',
                        'ari', '--container-format', 'ari', '--file',
                        path('images', 'initrd.gz'), 'minicloud-ramdisk')
    for name, flags in IMAGES.items():
        openstack('image', 'create', '--public', '--disk-format', 'qcow2',
                  '--container-format', 'bare', '--file',
                  path('images', 'disk.qcow2'),
                  '--property', 'kernel_id=%s' % kernel['id'],
                  '--property', 'ramdisk_id=%s' % ramdisk['id'],
                  '--property', 'os_command_line=%s' % (GUEST_CMDLINE % flags),
                  name)
