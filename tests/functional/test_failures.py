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

"""Failures injected for real, and what must survive each of them.

Whatever fails, the instance keeps running with its persistent definition
and its disk unchanged, no block job is left, the snapshots directory is
empty, and the error says what went wrong.  Each failure is real: Glance is
stopped, the image deleted, the filesystem filled, the job aborted through
libvirt from outside, the copy slowed past the timeout.
"""

import os

import libvirt
import pytest

from nova.compute import task_states as states
from nova import exception as nova_exception

from nova_snapdriver import exception
from tests.testbed import checks
from tests.testbed import libvirtd
from tests.testbed import smallfs


@pytest.fixture
def small_snapshots_dir(conf):
    """[libvirt] snapshots_directory on a 48 MiB filesystem of its own.

    Request it before ``instance``: libvirt gives each QEMU its own mount
    namespace, which sees only the mounts that existed when it started.
    """
    with smallfs.SmallFilesystem(48) as fs:
        path = os.path.join(fs.path, 'snapshots')
        os.mkdir(path)
        conf('libvirt', snapshots_directory=path)
        fs.snapshots = path
        yield fs


def assert_nothing_lost(inst, reference, snapshots_dir):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(inst.lookup()) == {}
    assert checks.same_content(inst.disk_path, reference)
    info = checks.image_info(inst.disk_path, 'qcow2')
    assert info['full-backing-filename'] == inst.base_path
    assert checks.leftovers(snapshots_dir) == []


class OnTaskState(object):
    """update_task_state that runs ``action`` when ``state`` is reached."""

    def __init__(self, state, action):
        self.state = state
        self.action = action
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        self.calls.append(task_state)
        if task_state == self.state:
            self.action()


def test_glance_stopped_before_upload(
        driver, context, instance, make_image, glance, reference,
        snapshots_dir):
    image = make_image(instance)
    hook = OnTaskState(states.IMAGE_UPLOADING, glance.stop)

    with pytest.raises(nova_exception.GlanceConnectionFailed) as err:
        driver.snapshot(context, instance.obj, image['id'], hook)

    assert not glance.is_running()
    assert 'Connection refused' in str(err.value), repr(err.value)
    assert_nothing_lost(instance, reference, snapshots_dir)


def test_image_deleted_midway_raises_image_not_found(
        driver, context, instance, make_image, glance_client, reference,
        snapshots_dir):
    image = make_image(instance)
    hook = OnTaskState(states.IMAGE_PENDING_UPLOAD,
                       lambda: glance_client.images.delete(image['id']))

    with pytest.raises(nova_exception.ImageNotFound):
        driver.snapshot(context, instance.obj, image['id'], hook)

    assert_nothing_lost(instance, reference, snapshots_dir)


def test_image_already_deleted_fails_before_touching_the_instance(
        driver, context, instance, make_image, glance_client, reference,
        snapshots_dir, task_states):
    image = make_image(instance)
    glance_client.images.delete(image['id'])

    with pytest.raises(nova_exception.ImageNotFound):
        driver.snapshot(context, instance.obj, image['id'], task_states)

    assert task_states.calls == []
    assert_nothing_lost(instance, reference, snapshots_dir)


def test_too_little_space_is_refused_up_front_with_the_sizes(
        driver, context, conf, make_instance, make_image, glance_client,
        task_states):
    inst = make_instance()
    with smallfs.SmallFilesystem(16) as fs:
        conf('libvirt', snapshots_directory=fs.path)
        image = make_image(inst)

        with pytest.raises(exception.InsufficientSnapshotSpace) as err:
            driver.snapshot(context, inst.obj, image['id'], task_states)

        message = str(err.value)
        assert fs.path in message
        assert 'needs' in message and 'are free' in message
        assert task_states.calls == []
        assert checks.leftovers(fs.path) == []
    assert inst.is_persistent()
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    assert glance_client.images.get(image['id']).status == 'queued'


def test_disk_full_during_convert_fails_with_qemu_img_error(
        driver, context, small_snapshots_dir, instance, make_image,
        listener, reference):
    fs = small_snapshots_dir

    def fill_after_capture(uuid, phase, done, total):
        if phase == 'capture:done':
            fs.fill(leave_bytes=512 * 1024)
    listener(fill_after_capture)
    image = make_image(instance)

    with pytest.raises(exception.QemuImgFailed) as err:
        driver.snapshot(context, instance.obj, image['id'],
                        lambda **kw: None)

    assert 'qemu-img convert' in str(err.value)
    assert 'No space left on device' in str(err.value)
    assert_nothing_lost(instance, reference, fs.snapshots)


def test_disk_full_during_the_copy_fails_the_block_job(
        driver, context, small_snapshots_dir, instance, make_image,
        reference):
    fs = small_snapshots_dir
    image = make_image(instance)
    # After the plan, before the capture: room for the overlay's header
    # only, so QEMU's writes into the overlay fail.
    hook = OnTaskState(states.IMAGE_PENDING_UPLOAD,
                       lambda: fs.fill(leave_bytes=1024 * 1024))

    with pytest.raises(exception.BlockJobFailed) as err:
        driver.snapshot(context, instance.obj, image['id'], hook)

    assert 'failed in QEMU or was cancelled' in str(err.value)
    assert_nothing_lost(instance, reference, fs.snapshots)


def test_block_job_cancelled_from_outside(
        driver, context, conf, instance, make_image, listener, reference,
        snapshots_dir):
    conf('snapdriver', block_job_bandwidth=1)
    outsider = libvirt.open(libvirtd.URI)
    aborted = []

    def abort_once(uuid, phase, done, total):
        if phase == 'copy' and not aborted:
            outsider.lookupByUUIDString(uuid).blockJobAbort('vda', 0)
            aborted.append(done)
    listener(abort_once)
    image = make_image(instance)

    with pytest.raises(exception.BlockJobFailed) as err:
        driver.snapshot(context, instance.obj, image['id'],
                        lambda **kw: None)

    outsider.close()
    assert aborted, 'the copy finished before it could be cancelled'
    assert instance.uuid in str(err.value)
    assert 'cancelled' in str(err.value)
    assert_nothing_lost(instance, reference, snapshots_dir)


def test_block_job_timeout_aborts_and_names_the_option(
        driver, context, conf, instance, make_image, reference,
        snapshots_dir):
    conf('snapdriver', block_job_bandwidth=1, block_job_timeout=1)
    image = make_image(instance)

    with pytest.raises(exception.BlockJobTimeout) as err:
        driver.snapshot(context, instance.obj, image['id'],
                        lambda **kw: None)

    assert 'block_job_timeout' in str(err.value)
    assert 'not ready after 1 s' in str(err.value)
    assert_nothing_lost(instance, reference, snapshots_dir)
