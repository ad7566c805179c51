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

"""The driver on the nova release installed, as its nova-compute runs it.

Each snapshot runs in a child that starts as that release's nova-compute
starts (``tests/testbed/child.py``: ``nova.cmd.compute`` first), so under
eventlet: nova 31 to 33 monkey-patch nova-compute by default.  On nova 34,
whose nova-compute runs on native threads as the rest of this tier does,
the child is patched with ``OS_NOVA_DISABLE_EVENTLET_PATCHING=0``, as an
operator who kept eventlet would.

The smoke of a release, run by the functional tier on 34 and by
``tools/run-tests`` in each older release's env (``unit-nova31`` ..., with
that release's Glance): a live snapshot with each capture method, a guest
saved for its snapshot (``disable_libvirt_livesnapshot``, nova's own
``suspend`` and start, the start from inside the upload's read), one
crash-recovery phase, one libvirtd restart.
"""

from importlib import metadata
import os
import time

import libvirt
import pytest

from nova_snapdriver import journal
from tests.testbed import checks
from tests.testbed import child as test_child
from tests.testbed import libvirtd
from tests.testbed import recover

NOVA = metadata.version('nova')
# nova-compute's default: eventlet up to 33, native threads from 34.
EVENTLET_BY_DEFAULT = int(NOVA.split('.')[0]) < 34
ENVIRON = {} if EVENTLET_BY_DEFAULT else {
    'OS_NOVA_DISABLE_EVENTLET_PATCHING': '0'}
METHODS = ['rebase', 'copy', 'backup', 'stream', 'auto']
# What each method runs as on this host: auto streams.
RAN = {'auto': 'stream'}
DOWN_SECONDS = 3


def assert_snapshot_ran(result, method='stream'):
    """The child's snapshot ended well, under eventlet, with ``method``."""
    assert result['ok'], '%s\n%s' % (result['error'], result['traceback'])
    assert result['eventlet'], 'nova-compute was not under eventlet'
    assert result['methods'] == [RAN.get(method, method)], result


def assert_image_is_the_disk(glance_client, image_id, reference, workdir):
    stored = glance_client.images.get(image_id)
    assert stored.status == 'active'
    path = checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.img'))
    try:
        assert checks.same_content(path, reference, stored.disk_format)
    finally:
        os.unlink(path)


def assert_instance_as_it_was(instance, reference, snapshots_dir):
    assert instance.is_persistent()
    assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
    domain = instance.lookup()
    assert checks.block_jobs(domain) == {}
    assert domain.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    assert checks.same_content(instance.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


@pytest.mark.parametrize('method', METHODS)
def test_each_method_under_eventlet(
        method, nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir, workdir):
    image = make_image(instance)

    result = test_child.run(
        nova_conf, instance, image['id'], environ=ENVIRON,
        options={'snapdriver': {'capture_method': method}})

    assert_snapshot_ran(result, method)
    assert_image_is_the_disk(glance_client, image['id'], reference, workdir)
    assert_instance_as_it_was(instance, reference, snapshots_dir)


def qemu_pid(instance):
    with open('/run/libvirt/qemu/%s.pid' % instance.name) as f:
        return int(f.read())


def test_saved_guest_streamed_under_eventlet(
        nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir, workdir):
    """The guest saved by nova's ``suspend``, streamed, started again.

    Started by nova's code from the upload's read, which nova's image API
    runs in a native thread under eventlet: the guest runs again in a new
    QEMU, and the image is its disk.
    """
    image = make_image(instance)
    before = qemu_pid(instance)

    result = test_child.run(
        nova_conf, instance, image['id'], environ=ENVIRON,
        options={'snapdriver': {'capture_method': 'stream'},
                 'workarounds': {'disable_libvirt_livesnapshot': True}})

    assert_snapshot_ran(result)  # ours: nova's own path journals nothing
    assert qemu_pid(instance) != before
    assert not instance.lookup().hasManagedSaveImage(0)
    assert_image_is_the_disk(glance_client, image['id'], reference, workdir)
    assert_instance_as_it_was(instance, reference, snapshots_dir)


def test_killed_mid_stream_under_eventlet_is_recovered(
        nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir):
    image = make_image(instance)
    child = test_child.run_until(
        nova_conf, instance, image['id'], 'streaming', environ=ENVIRON,
        options={'snapdriver': {'capture_method': 'stream'}})
    domain = instance.lookup()
    assert domain.jobStats().get('type') != libvirt.VIR_DOMAIN_JOB_NONE

    test_child.kill9(child)

    recover.recover_all(nova_conf, instance, image, glance_client,
                        reference, snapshots_dir)


def test_libvirtd_restarted_mid_stream_under_eventlet(
        nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir, workdir):
    """libvirtd goes away while the pull backup runs, and comes back.

    The stream reads QEMU's export, not libvirtd; ending the backup goes
    through nova's reconnected ``Host``.  The image is the disk.
    """
    image = make_image(instance)
    child = test_child.run_until(
        nova_conf, instance, image['id'], 'pause:streaming', environ=ENVIRON,
        options={'snapdriver': {'capture_method': 'stream'}})
    try:
        libvirtd.kill()
        time.sleep(DOWN_SECONDS)
    finally:
        libvirtd.ensure_running()
    test_child.resume(child)
    result = test_child.finish(child)

    assert_snapshot_ran(result)
    assert_image_is_the_disk(glance_client, image['id'], reference, workdir)
    assert_instance_as_it_was(instance, reference, snapshots_dir)
