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

"""Snapshots of running, paused and shut-off instances on real libvirt.

Each test checks what a user sees: the image in Glance (status, format,
flat, bytes equal to the instance's disk, the properties nova's in-tree
driver would set), the domain (persistent, in its power state) and the
snapshots directory (empty).
"""

import os

import libvirt
import pytest

from nova.compute import task_states as states

from tests.testbed import checks
from tests.testbed import guest as test_guest
from tests.testbed import nova_env

# Properties that differ between any two uploads by nature.
PER_UPLOAD = {'id', 'name', 'checksum', 'os_hash_value', 'size',
              'virtual_size', 'created_at', 'updated_at', 'file', 'self',
              'direct_url', 'locations', 'instance_uuid', 'base_image_ref'}


def assert_instance_intact(inst, state=libvirt.VIR_DOMAIN_RUNNING):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == state
    info = checks.image_info(inst.disk_path, 'qcow2')
    assert info['full-backing-filename'] == inst.base_path
    assert checks.block_jobs(inst.lookup()) == {}


def snapshot(driver, context, inst, make_image, task_states_rec):
    image = make_image(inst)
    driver.snapshot(context, inst.obj, image['id'], task_states_rec)
    return image['id']


def download(glance_client, image_id, workdir):
    return checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.img'))


@pytest.mark.parametrize('base_format', ['raw', 'qcow2'])
def test_running_instance_snapshot_is_flat_equal_and_leaves_nothing(
        base_format, driver, context, make_instance, make_image,
        glance_client, task_states, snapshots_dir, workdir):
    inst = make_instance(base_format=base_format)

    image_id = snapshot(driver, context, inst, make_image, task_states)

    image = glance_client.images.get(image_id)
    assert image.status == 'active'
    assert image.disk_format == 'qcow2'
    assert image.container_format == 'bare'
    local = download(glance_client, image_id, workdir)
    assert 'backing-filename' not in checks.image_info(local, 'qcow2')
    assert checks.same_content(local, inst.disk_path)
    assert_instance_intact(inst)
    assert checks.leftovers(snapshots_dir) == []
    assert task_states.calls == [
        (states.IMAGE_PENDING_UPLOAD, None),
        (states.IMAGE_UPLOADING, states.IMAGE_PENDING_UPLOAD)]
    os.unlink(local)


def test_image_properties_match_nova_intree_driver(
        driver, context, make_instance, make_image, glance_client,
        task_states, workdir):
    """Run nova's own LibvirtDriver on the same instance and compare."""
    inst = make_instance()
    ours = snapshot(driver, context, inst, make_image, task_states)
    intree_driver = nova_env.load_intree_driver()
    theirs = snapshot(intree_driver, context, inst, make_image,
                      lambda **kw: None)
    assert_instance_intact(inst)

    ours_img = dict(glance_client.images.get(ours))
    theirs_img = dict(glance_client.images.get(theirs))
    for key in PER_UPLOAD:
        ours_img.pop(key, None)
        theirs_img.pop(key, None)
    assert ours_img == theirs_img
    assert ours_img['image_type'] == 'snapshot'
    assert ours_img['image_location'] == 'snapshot'
    assert ours_img['owner_id'] == nova_env.PROJECT_ID
    # And both hold the same disk.
    a = download(glance_client, ours, workdir)
    b = download(glance_client, theirs, workdir)
    assert checks.same_content(a, b)
    os.unlink(a)
    os.unlink(b)


@pytest.mark.parametrize('to_state,state', [
    # Shut off: the cold path, the disk is read as it is.
    (lambda dom: dom.destroy(), libvirt.VIR_DOMAIN_SHUTOFF),
    # Paused: the live path; block jobs run while the vCPUs don't.
    (lambda dom: dom.suspend(), libvirt.VIR_DOMAIN_PAUSED),
], ids=['shut-off', 'paused'])
def test_instance_not_running_is_snapshotted_and_keeps_its_state(
        to_state, state, driver, context, make_instance, make_image,
        glance_client, task_states, snapshots_dir, workdir):
    inst = make_instance()
    to_state(inst.lookup())

    image_id = snapshot(driver, context, inst, make_image, task_states)

    local = download(glance_client, image_id, workdir)
    assert checks.same_content(local, inst.disk_path)
    assert_instance_intact(inst, state=state)
    assert checks.leftovers(snapshots_dir) == []
    os.unlink(local)


def test_guest_writing_during_the_copy_gets_a_point_in_time_image(
        driver, context, make_instance, make_image, glance_client,
        task_states, snapshots_dir, workdir, conf):
    """The guest writes marker k+1 only after marker k reached the disk.

    So a disk as it was at one instant holds markers 1..K and no other; a
    copy torn across the guest's writes would hold a later marker without
    an earlier one.  The copy is slowed (bandwidth limit) so that hundreds
    of markers are written while it runs, and K must lie between the last
    marker written before the snapshot began and the first one after it
    ended.
    """
    inst = make_instance(mode='markers', disk_mib=64)
    test_guest.wait_for_console(inst.console_log, 'MARK 20', timeout=60)
    conf('snapdriver', block_job_bandwidth=1)
    before = test_guest.last_console_mark(inst.console_log)

    image_id = snapshot(driver, context, inst, make_image, task_states)

    after = test_guest.last_console_mark(inst.console_log)
    local = download(glance_client, image_id, workdir)
    k = test_guest.check_consistent(test_guest.read_markers(local, 'qcow2'))
    assert before <= k <= after
    assert after - before > 20, 'guest barely wrote during the snapshot'
    assert_instance_intact(inst)
    assert checks.leftovers(snapshots_dir) == []
    os.unlink(local)
