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

"""A shut-off instance streamed straight into Glance (coldstream).

Real libvirtd, qemu-nbd started by libnbd, a real Glance.  What a user
sees: the image equals the disk, nothing at all was staged in the
snapshots directory while it was read, the domain stayed shut off and
persistent, and a start of the domain during the read is refused (QEMU
cannot take its write lock while qemu-nbd reads), so the image is the
disk as it was.
"""

import os

import libvirt
import pytest

from nova_snapdriver import journal
from tests.testbed import checks


def assert_left_as_it_was(inst, snapshots_dir):
    assert inst.is_persistent()
    assert inst.state() == libvirt.VIR_DOMAIN_SHUTOFF
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


def assert_image_is(glance_client, image_id, fmt, reference, workdir):
    """The image in Glance reads, as ``fmt``, as the disk ``reference``."""
    path = checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.' + fmt))
    try:
        assert checks.same_content(path, reference, a_fmt=fmt)
    finally:
        os.unlink(path)


@pytest.mark.parametrize('method', ['stream', 'auto'])
@pytest.mark.parametrize('fmt', ['qcow2', 'raw'])
def test_shut_off_disk_streams_with_nothing_staged(
        fmt, method, driver, context, conf, make_instance, make_image,
        glance_client, listener, snapshots_dir, workdir, caplog):
    conf('snapdriver', capture_method=method)
    conf('libvirt', snapshot_image_format=fmt)
    inst = make_instance(prefill_markers_mib=32)
    inst.lookup().destroy()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)
    staged = []

    def look(uuid, phase, done, total):
        # Whatever the snapshots directory holds while the image is read.
        if uuid == inst.uuid and phase == 'upload':
            staged.append(checks.leftovers(snapshots_dir))
    listener(look)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert staged and all(s == [] for s in staged), staged
    assert 'Planned cold snapshot (capture method stream)' in caplog.text
    stored = glance_client.images.get(image['id'])
    assert stored.status == 'active'
    assert stored.disk_format == fmt
    assert_image_is(glance_client, image['id'], fmt, reference, workdir)
    assert checks.same_content(inst.disk_path, reference)
    assert_left_as_it_was(inst, snapshots_dir)
    os.unlink(reference)


def test_a_start_during_the_read_is_refused(
        driver, context, conf, make_instance, make_image, glance_client,
        listener, snapshots_dir, workdir):
    """qemu-nbd's shared lock keeps QEMU (and so the guest) off the disk."""
    conf('snapdriver', capture_method='stream')
    inst = make_instance(prefill_markers_mib=32)
    inst.lookup().destroy()
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)
    refused = []

    def start_the_domain(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'upload' and done and not refused:
            try:
                inst.lookup().create()
                refused.append(None)
            except libvirt.libvirtError as e:
                refused.append(str(e))
    listener(start_the_domain)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert refused and refused[0] is not None, 'the domain started'
    assert 'lock' in refused[0], refused[0]
    assert_image_is(glance_client, image['id'], 'qcow2', reference, workdir)
    assert_left_as_it_was(inst, snapshots_dir)
    os.unlink(reference)
