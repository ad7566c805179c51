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

``[workarounds] disable_libvirt_livesnapshot``: with it, a running or
paused guest is suspended (managed save) for a cold snapshot and resumed.
By nova's code under nova's driver and under ours with auto (nova's is the
shorter outage), with capture methods that do not stream, or formats a
stream cannot write; by ours with stream, which streams the saved guest's
disk and starts the guest again once the disk's last byte is read
(``suspend``): the same image as nova's, nothing staged, the guest back as
it was before Glance is done.

``[compute] max_concurrent_disk_ops``: with its one slot taken, neither
driver sends a byte to Glance, and a stream does not begin its backup,
until the slot is free.
"""

import os
import threading
import time

import glanceclient.exc
import libvirt
from nova.compute import utils as compute_utils
import pytest

from nova_snapdriver import exception
from nova_snapdriver import journal
from nova_snapdriver import novacompat
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


@pytest.mark.fallback_allowed  # vmdk: no stream, so nova's own path
@pytest.mark.parametrize('which,method,fmt', [
    ('in-tree', 'auto', 'qcow2'), ('ours', 'rebase', 'qcow2'),
    ('ours', 'auto', 'qcow2'), ('ours', 'stream', 'vmdk')])
def test_disable_libvirt_livesnapshot_suspends_the_guest_as_nova_does(
        which, method, fmt, driver, intree, context, conf, make_instance,
        make_image, glance_client, snapshots_dir, workdir, begun, caplog):
    """The guest is saved and resumed (a new QEMU), by nova's code.

    Our driver hands it to nova's unless asked to stream (auto keeps
    nova's shorter outage), and where a stream cannot write the format.
    """
    conf('workarounds', disable_libvirt_livesnapshot=True)
    conf('snapdriver', capture_method=method)
    conf('libvirt', snapshot_image_format=fmt)
    inst = make_instance()
    before = qemu_pid(inst)
    image = make_image(inst)

    (driver if which == 'ours' else intree).snapshot(
        context, inst.obj, image['id'], lambda **kw: None)

    # Nothing of ours was planned: nova's code ran, and our log says why.
    assert begun == []
    if which == 'ours':
        assert "left to nova's libvirt driver" in caplog.text
        assert {'rebase': 'capture_method rebase does not stream',
                'auto': 'capture_method auto keeps nova\'s shorter outage',
                'stream': 'not vmdk'}[method] in caplog.text
    assert qemu_pid(inst) != before, 'the guest was never stopped'
    assert glance_client.images.get(image['id']).status == 'active'
    assert_same_as_the_disk(glance_client, image['id'], inst, fmt, workdir)
    assert_untouched(inst, snapshots_dir)


class SavedGuestWatch(object):
    """What a test sees while our driver snapshots a saved guest.

    ``while_saved``: (domain state, has a managed-save image) once the
    guest is saved; ``staged``: what the snapshots directory holds at
    each upload update; ``at_last_byte``: the domain's state when the
    upload has read the image's last byte, before that read returns to
    the upload: Glance has not got those bytes yet.  (Glance is not asked
    from here: its one worker is busy with the upload.)
    """

    def __init__(self, inst, snapshots_dir):
        self.inst = inst
        self.snapshots_dir = snapshots_dir
        self.while_saved = []
        self.staged = []
        self.at_last_byte = []

    def __call__(self, uuid, phase, done, total):
        if uuid != self.inst.uuid:
            return
        if phase == 'step:suspended':
            domain = self.inst.lookup()
            self.while_saved.append((domain.state()[0],
                                     domain.hasManagedSaveImage(0)))
        elif phase == 'upload':
            self.staged.append(checks.leftovers(self.snapshots_dir))
            if total and done == total and not self.at_last_byte:
                self.at_last_byte.append(self.inst.state())


@pytest.mark.parametrize('method,fmt,paused', [
    ('stream', 'qcow2', False), ('stream', 'raw', False),
    ('stream', 'qcow2', True)])
def test_disable_libvirt_livesnapshot_streams_the_saved_guest(
        method, fmt, paused, driver, intree, context, conf, make_instance,
        make_image, glance_client, listener, snapshots_dir, workdir, begun,
        caplog):
    """Ours: nova's image, nothing staged, the guest back before Glance."""
    conf('workarounds', disable_libvirt_livesnapshot=True)
    conf('snapdriver', capture_method=method)
    conf('libvirt', snapshot_image_format=fmt)
    inst = make_instance()
    if paused:
        inst.lookup().suspend()
    state = (libvirt.VIR_DOMAIN_PAUSED if paused
             else libvirt.VIR_DOMAIN_RUNNING)
    theirs = make_image(inst)
    intree.snapshot(context, inst.obj, theirs['id'], lambda **kw: None)
    assert inst.state() == state
    before = qemu_pid(inst)
    ours = make_image(inst)
    watch = SavedGuestWatch(inst, snapshots_dir)
    listener(watch)

    driver.snapshot(context, inst.obj, ours['id'], lambda **kw: None)

    assert begun == ['stream']
    assert 'the guest suspended while its disk is read' in caplog.text
    assert 'again: suspended for' in caplog.text
    assert watch.while_saved == [(libvirt.VIR_DOMAIN_SHUTOFF, 1)]
    assert qemu_pid(inst) != before, 'the guest was never stopped'
    # Nothing staged, ever; the guest back once the disk was read, before
    # Glance had the image.
    assert watch.staged and all(s == [] for s in watch.staged), watch.staged
    assert watch.at_last_byte == [state], watch.at_last_byte
    assert image_record(glance_client, ours['id']) == \
        image_record(glance_client, theirs['id'])
    assert_same_as_the_disk(glance_client, ours['id'], inst, fmt, workdir)
    assert inst.state() == state
    assert not inst.lookup().hasManagedSaveImage(0)
    if paused:
        inst.lookup().resume()
    assert_untouched(inst, snapshots_dir)


def fail_upload(monkeypatch, whole, error):
    """Glance's upload reads part (or ``whole``) of the image, then fails."""
    def send(self, image_id, data):
        if whole:
            while data.read(1024 * 1024):
                pass
        else:
            data.read(64 * 1024)
        raise error
    monkeypatch.setattr(novacompat.GlanceUploader, 'send', send)


def test_a_failed_upload_of_a_saved_guest_starts_it_again(
        driver, context, conf, make_instance, make_image, snapshots_dir,
        begun, monkeypatch):
    """Glance fails half-way: the snapshot fails, the guest runs again."""
    conf('workarounds', disable_libvirt_livesnapshot=True)
    conf('snapdriver', capture_method='stream')
    inst = make_instance()
    before = qemu_pid(inst)
    image = make_image(inst)
    fail_upload(monkeypatch, whole=False,
                error=glanceclient.exc.HTTPInternalServerError('injected'))

    with pytest.raises(glanceclient.exc.HTTPInternalServerError):
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert begun == ['stream']
    assert qemu_pid(inst) != before, 'the guest was never stopped'
    assert not inst.lookup().hasManagedSaveImage(0)
    assert_untouched(inst, snapshots_dir)


def test_a_retry_after_the_guest_runs_again_does_not_read_its_disk(
        driver, context, conf, make_instance, make_image, snapshots_dir,
        begun, monkeypatch):
    """The upload fails once the whole disk was read: no second read."""
    conf('workarounds', disable_libvirt_livesnapshot=True)
    conf('snapdriver', capture_method='stream')
    conf('glance', num_retries=1)
    inst = make_instance()
    image = make_image(inst)
    fail_upload(monkeypatch, whole=True,
                error=IOError('connection reset (injected)'))

    with pytest.raises(exception.UploadNotRewindable) as raised:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert 'the disk may have changed since' in str(raised.value)
    assert begun == ['stream']
    assert not inst.lookup().hasManagedSaveImage(0)
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
