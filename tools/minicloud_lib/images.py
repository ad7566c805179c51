"""The guest images and flavors ``up`` puts into the cloud.

The tiny guest built offline (a Debian cloud kernel, a busybox initramfs
and a small qcow2 disk, see tests/testbed/guest.py), then the flavors and
the images in Glance: ``minicloud-kernel`` (aki), ``minicloud-ramdisk``
(ari) and two disk images that differ only by their kernel command line,
``minicloud-idle`` and ``minicloud-markers``.
"""

import os
import shutil
import subprocess

from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import FLAVORS
from minicloud_lib.config import GUEST_CACHE
from minicloud_lib.config import GUEST_CMDLINE
from minicloud_lib.config import GUEST_DISK_MIB
from minicloud_lib.config import path
from minicloud_lib.services import openstack
from tests.testbed import guest as test_guest


def build_guest_images():
    """The tiny guest: kernel, initramfs and a qcow2 disk, made offline."""
    kernel, initrd = test_guest.build_boot_files(GUEST_CACHE)
    shutil.copy(kernel, path('images', 'vmlinuz'))
    shutil.copy(initrd, path('images', 'initrd.gz'))
    raw = path('images', 'disk.raw')
    with open(raw, 'wb') as f:
        # Recognisable data below the markers region: the image's own.
        f.write(b''.join(b'MINICLOUD BASE IMAGE BLOCK %08d\n' % i
                         for i in range(32 * 1024)).ljust(1024 * 1024, b'.'))
        f.truncate(GUEST_DISK_MIB * 1024 * 1024)
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
    for mode in ('idle', 'markers'):
        openstack('image', 'create', '--public', '--disk-format', 'qcow2',
                  '--container-format', 'bare', '--file',
                  path('images', 'disk.qcow2'),
                  '--property', 'kernel_id=%s' % kernel['id'],
                  '--property', 'ramdisk_id=%s' % ramdisk['id'],
                  '--property', 'os_command_line=%s' % (GUEST_CMDLINE % mode),
                  'minicloud-%s' % mode)
