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

"""``openstack server image create`` on a real cloud running our driver.

The servers boot the tiny guest of tools/minicloud/minicloud (a Debian cloud
kernel
and a busybox initramfs through the image's kernel_id/ramdisk_id), which
writes numbered markers to its disk and reports each on its console.  A
snapshot taken while it writes must hold markers 1..K and nothing else,
with K between the counts the console showed before and after the
snapshot; of a stopped or paused server it must equal the disk.
"""

import os
import stat
import subprocess
import tempfile
import threading

import libvirt

from tests.e2e.conftest import console_marks
from tests.e2e.conftest import domain_info
from tests.e2e.conftest import MARKERS_IMAGE
from tests.e2e.conftest import openstack
from tests.e2e.conftest import STATE
from tests.e2e.conftest import wait_for
from tests.e2e.conftest import wait_for_status
from tests.testbed import guest as test_guest

INSTANCES = os.path.join(STATE, 'nova', 'instances')
BASE_DISK = os.path.join(STATE, 'images', 'disk.qcow2')


def download(image_id, directory):
    dest = os.path.join(directory, image_id + '.img')
    openstack('image', 'save', '--file', dest, image_id, parse=False)
    return dest


def raw_bytes(image_path, fmt, size):
    """The first size bytes of the guest's view of an image."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'head.raw')
        opts = ('driver=raw,offset=0,size=%d,file.driver=%s,'
                'file.file.driver=file,file.file.filename=%s'
                % (size, fmt, image_path))
        subprocess.run(['qemu-img', 'convert', '-U', '--image-opts', opts,
                        '-O', 'raw', out], check=True, timeout=120)
        with open(out, 'rb') as f:
            return f.read()


def assert_snapshot_image(image, server):
    """Status and the properties a snapshot image must carry."""
    shown = openstack('image', 'show', image['id'])
    assert shown['status'] == 'active', shown
    props = shown['properties']
    assert props['image_type'] == 'snapshot', props
    assert props['instance_uuid'] == server['id'], props
    # Booting from it needs the guest's kernel and initramfs.
    base = openstack('image', 'show', MARKERS_IMAGE)['properties']
    assert props['kernel_id'] == base['kernel_id']
    assert props['ramdisk_id'] == base['ramdisk_id']
    assert shown['disk_format'] == 'qcow2', shown
    return shown


def assert_host_clean():
    """No staging files in the snapshots directory, no journal record."""
    assert os.listdir(os.path.join(INSTANCES, 'snapshots')) == []
    journal = os.path.join(STATE, 'nova', 'snapdriver-journal')
    assert [n for n in os.listdir(journal) if n.endswith('.json')] == []


def assert_image_equals_disk(image_path, server):
    disk = os.path.join(INSTANCES, server['id'], 'disk')
    res = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'qcow2',
                          '-F', 'qcow2', image_path, disk],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout


def test_live_snapshot_of_a_writing_server(resources, tmp_path):
    server = resources.boot('e2e-live', min_marks=20)
    before, _log = console_marks(server['id'])

    image = resources.snapshot(server['id'], 'e2e-live-snap')

    after, _log = console_marks(server['id'])
    assert_snapshot_image(image, server)
    shown = wait_for_status(server['id'], 'ACTIVE')
    assert shown['OS-EXT-STS:task_state'] is None
    assert domain_info(shown['OS-EXT-SRV-ATTR:instance_name'])[:2] == (
        True, libvirt.VIR_DOMAIN_RUNNING)
    assert_host_clean()

    path = download(image['id'], str(tmp_path))
    count = test_guest.check_consistent(
        test_guest.read_markers(path, 'qcow2'))
    assert before <= count <= after, (before, count, after)
    # Below the markers the disk holds the base image's own data.
    head = test_guest.MARKER_BASE
    assert raw_bytes(path, 'qcow2', head) == raw_bytes(BASE_DISK, 'qcow2',
                                                       head)
    # The guest went on writing after the snapshot.
    wait_for('markers after the snapshot',
             lambda: console_marks(server['id'])[0] > after)

    # A second server boots from the snapshot and finds its data.  Its
    # guest must not write markers of its own: the image's kernel command
    # line (inherited from the server) is set to the idle mode first.
    openstack('image', 'set', '--property',
              'os_command_line=console=ttyS0 snapmode=idle', image['id'],
              parse=False)
    clone = resources.boot('e2e-from-snap', image=image['id'])
    wait_for('the clone guest to start',
             lambda: test_guest.READY in console_marks(clone['id'])[1])
    clone_disk = os.path.join(INSTANCES, clone['id'], 'disk')
    assert test_guest.check_consistent(
        test_guest.read_markers(clone_disk, 'qcow2')) == count
    assert raw_bytes(clone_disk, 'qcow2', head) == raw_bytes(
        BASE_DISK, 'qcow2', head)


def snapshot_at_rest(resources, server, status, domain_state, tmp_path):
    """Snapshot a server that cannot write; return the image's markers.

    The server must stay in its status with its domain persistent, and
    the image must equal its disk.
    """
    image = resources.snapshot(server['id'], server['name'] + '-snap')

    assert_snapshot_image(image, server)
    shown = wait_for_status(server['id'], status)
    persistent, state, _job = domain_info(
        shown['OS-EXT-SRV-ATTR:instance_name'])
    assert (persistent, state) == (True, domain_state)
    assert_host_clean()
    path = download(image['id'], str(tmp_path))
    assert_image_equals_disk(path, server)
    return test_guest.check_consistent(
        test_guest.read_markers(path, 'qcow2'))


def test_snapshot_of_a_stopped_server(resources, tmp_path):
    server = resources.boot('e2e-stopped', min_marks=20)
    openstack('server', 'stop', server['id'], parse=False)
    wait_for_status(server['id'], 'SHUTOFF')

    count = snapshot_at_rest(resources, server, 'SHUTOFF',
                             libvirt.VIR_DOMAIN_SHUTOFF, tmp_path)

    assert count >= 20


def test_snapshot_of_a_paused_server(resources, tmp_path):
    server = resources.boot('e2e-paused', min_marks=20)
    openstack('server', 'pause', server['id'], parse=False)
    wait_for_status(server['id'], 'PAUSED')
    paused_at, _log = console_marks(server['id'])

    count = snapshot_at_rest(resources, server, 'PAUSED',
                             libvirt.VIR_DOMAIN_PAUSED, tmp_path)

    # The console may lag one marker behind the disk, never lead it.
    assert paused_at <= count <= paused_at + 1, (paused_at, count)
    # Unpaused, it goes on writing.
    openstack('server', 'unpause', server['id'], parse=False)
    wait_for_status(server['id'], 'ACTIVE')
    wait_for('markers after unpause',
             lambda: console_marks(server['id'])[0] > count)


def regular_files_under(directory):
    """Every regular file below ``directory`` right now."""
    found = []
    for top, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(top, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    found.append(path)
            except FileNotFoundError:
                pass  # gone between the listing and the look
    return found


def test_shelve_streams_with_no_temp_file_at_any_point(resources, tmp_path):
    """Shelve snapshots the shut-off server: read straight into Glance.

    The snapshots directory is watched every 10 ms from the shelve until
    the server is offloaded: a converted cold snapshot (nova's way) writes
    a temp image there for as long as its convert runs.
    """
    server = resources.boot('e2e-shelve', min_marks=20)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.extend(regular_files_under(os.path.join(INSTANCES,
                                                         'snapshots')))
            stop.wait(0.01)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        openstack('server', 'shelve', server['id'], parse=False)
        wait_for_status(server['id'], 'SHELVED_OFFLOADED')
    finally:
        stop.set()
        watcher.join()

    assert sorted(set(seen)) == []
    assert_host_clean()
    image, = openstack('image', 'list', '--name', 'e2e-shelve-shelved')
    resources.images.append(image['ID'])
    path = download(image['ID'], str(tmp_path))
    assert test_guest.check_consistent(
        test_guest.read_markers(path, 'qcow2')) >= 20
    openstack('server', 'unshelve', server['id'], parse=False)
    wait_for_status(server['id'], 'ACTIVE')
