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

"""nova's own snapshot options: ours against nova in-tree, on one domain.

Operators set nova's options, not ours.  For each ``[libvirt]
snapshot_image_format`` one running instance is snapshotted by nova's own
``LibvirtDriver`` and by ours with every capture method, and each image is
compared with nova's: the same ``disk_format``, ``container_format`` and
properties, and bytes that read back under that format as the disk.  A
method that cannot write the format (a stream lays out raw and qcow2 only)
must give way to one that can, as ``auto`` would, and convert.

``[workarounds] disable_libvirt_livesnapshot`` is nova's: with it, a
running guest is suspended (managed save) for a cold snapshot and resumed,
by nova's code, whichever driver is loaded.

``[compute] max_concurrent_disk_ops``: with its one slot taken, neither
driver sends a byte to Glance, and a stream does not begin its backup,
until the slot is free.
"""

import os
import threading
import time

import libvirt
from nova.compute import utils as compute_utils
import pytest

from nova_snapdriver import journal
from tests.testbed import checks
from tests.testbed import nova_env

FORMATS = ('raw', 'qcow2', 'vmdk', 'vdi')
METHODS = ('rebase', 'copy', 'backup', 'stream', 'auto')
# How long a test holds nova's disk-ops semaphore: a snapshot of a small
# disk that ignored it would be done well within this.
HELD = 8
# Properties that differ between any two uploads by nature.
PER_UPLOAD = {'id', 'name', 'checksum', 'os_hash_value', 'size',
              'virtual_size', 'created_at', 'updated_at', 'file', 'self',
              'direct_url', 'locations', 'instance_uuid', 'base_image_ref'}


def method_ran(asked, fmt):
    """The method that must run on this host: no stream of vmdk or vdi."""
    if asked in ('stream', 'auto'):
        return 'stream' if fmt in ('raw', 'qcow2') else 'backup'
    return asked


@pytest.fixture(scope='module')
def intree(nova_conf):
    return nova_env.load_intree_driver()


@pytest.fixture
def begun(monkeypatch):
    """The capture method of each journal record begun in the test."""
    methods = []
    begin = journal.begin

    def note(**fields):
        methods.append(fields.get('capture_method'))
        return begin(**fields)
    monkeypatch.setattr(journal, 'begin', note)
    return methods


def qemu_pid(inst):
    with open('/run/libvirt/qemu/%s.pid' % inst.name) as f:
        return int(f.read())


def image_record(glance_client, image_id):
    record = dict(glance_client.images.get(image_id))
    for key in PER_UPLOAD:
        record.pop(key, None)
    return record


def assert_same_as_the_disk(glance_client, image_id, inst, fmt, workdir):
    path = checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.' + fmt))
    try:
        assert checks.image_info(path, fmt)['format'] == fmt
        assert checks.same_content(path, inst.disk_path, a_fmt=fmt)
    finally:
        os.unlink(path)


def assert_untouched(inst, snapshots_dir):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(inst.lookup()) == {}
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


@pytest.mark.fallback_allowed  # checked here: no stream of vmdk or vdi
@pytest.mark.parametrize('fmt', FORMATS)
def test_every_method_gives_the_image_nova_gives(
        fmt, driver, intree, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, begun):
    conf('libvirt', snapshot_image_format=fmt)
    inst = make_instance()
    theirs = make_image(inst)
    intree.snapshot(context, inst.obj, theirs['id'], lambda **kw: None)
    expected = image_record(glance_client, theirs['id'])
    assert expected['disk_format'] == fmt
    assert expected['status'] == 'active'
    assert_same_as_the_disk(glance_client, theirs['id'], inst, fmt, workdir)

    for method in METHODS:
        conf('snapdriver', capture_method=method)
        ours = make_image(inst)
        driver.snapshot(context, inst.obj, ours['id'], lambda **kw: None)

        assert begun[-1] == method_ran(method, fmt), (method, begun)
        assert image_record(glance_client, ours['id']) == expected, method
        assert_same_as_the_disk(glance_client, ours['id'], inst, fmt,
                                workdir)
        assert_untouched(inst, snapshots_dir)
    assert len(begun) == len(METHODS)


@pytest.mark.parametrize('which', ['ours', 'in-tree'])
def test_disable_libvirt_livesnapshot_suspends_the_guest_as_nova_does(
        which, driver, intree, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, begun):
    """The guest is saved and resumed (a new QEMU), by either driver."""
    conf('workarounds', disable_libvirt_livesnapshot=True)
    conf('snapdriver', capture_method='auto')
    inst = make_instance()
    before = qemu_pid(inst)
    image = make_image(inst)

    (driver if which == 'ours' else intree).snapshot(
        context, inst.obj, image['id'], lambda **kw: None)

    # Our driver handed it to nova's code: nothing of ours was planned.
    assert begun == []
    assert qemu_pid(inst) != before, 'the guest was never stopped'
    assert glance_client.images.get(image['id']).status == 'active'
    assert_same_as_the_disk(glance_client, image['id'], inst, 'qcow2',
                            workdir)
    assert_untouched(inst, snapshots_dir)


@pytest.mark.parametrize('which', ['in-tree', 'backup', 'stream'])
def test_max_concurrent_disk_ops_holds_the_snapshot_as_nova_does(
        which, driver, intree, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, begun, monkeypatch):
    """The slot is taken (an image download, say) for HELD seconds."""
    # What nova-compute makes of max_concurrent_disk_ops = 1 at start.
    monkeypatch.setattr(compute_utils, 'disk_ops_semaphore',
                        threading.BoundedSemaphore(1))
    conf('compute', max_concurrent_disk_ops=1)
    if which != 'in-tree':
        conf('snapdriver', capture_method=which)
    inst = make_instance()
    image = make_image(inst)
    errors = []

    def snapshot():
        try:
            (intree if which == 'in-tree' else driver).snapshot(
                context, inst.obj, image['id'], lambda **kw: None)
        except Exception as e:
            errors.append(e)

    compute_utils.disk_ops_semaphore.acquire()
    worker = threading.Thread(target=snapshot)
    try:
        worker.start()
        time.sleep(HELD)
        assert worker.is_alive(), errors
        assert glance_client.images.get(image['id']).status == 'queued'
        if which == 'stream':
            # Waiting before backupBegin: no scratch grows meanwhile.
            assert inst.lookup().jobStats().get('type') == \
                libvirt.VIR_DOMAIN_JOB_NONE
            assert [p for p in checks.leftovers(snapshots_dir)
                    if not os.path.isdir(p)] == []
    finally:
        compute_utils.disk_ops_semaphore.release()
        worker.join(timeout=300)

    assert not worker.is_alive() and errors == []
    assert begun == ([] if which == 'in-tree' else [which])
    assert glance_client.images.get(image['id']).status == 'active'
    assert_same_as_the_disk(glance_client, image['id'], inst, 'qcow2',
                            workdir)
    assert_untouched(inst, snapshots_dir)
