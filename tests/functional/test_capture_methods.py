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

"""Each [snapdriver] capture_method on real libvirt (9.0) and QEMU (7.2).

rebase (the classic sequence), copy (a transient blockCopy job, no
undefine), backup (push-mode virDomainBackupBegin, no undefine, written
as the final image), stream (a pull backup streamed to Glance) and auto
(which must pick stream on this host).  For
each: the image is flat and equal to the disk, the domain persistent and
running, nothing is left in the snapshots directory and the journal is
empty; and a job aborted from outside, or a backup that outlasts
block_job_timeout, fails the snapshot and leaves the instance as it was.
"""

import os
import stat

import libvirt
import pytest

from nova_snapdriver import exception
from nova_snapdriver import journal
from nova_snapdriver import recovery
from tests.testbed import checks
from tests.testbed import guest as test_guest
from tests.testbed import libvirtd


@pytest.fixture
def recorded(monkeypatch):
    """The fields of every journal record begun during the test."""
    records = []
    begin = journal.begin

    def spy(**fields):
        records.append(dict(fields))
        return begin(**fields)
    monkeypatch.setattr(journal, 'begin', spy)
    return records


def assert_instance_as_before(inst, snapshots_dir, reference=None):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(inst.lookup()) == {}
    assert inst.lookup().jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    info = checks.image_info(inst.disk_path, 'qcow2')
    assert info['full-backing-filename'] == inst.base_path
    if reference:
        assert checks.same_content(inst.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


def staged_files(snapshots_dir):
    """{path: mode} of every regular file and directory staged now."""
    found = {}
    for top, dirs, files in os.walk(snapshots_dir):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                found[os.path.relpath(path, snapshots_dir)] = \
                    stat.S_IMODE(st.st_mode)
    return found


def download(glance_client, image_id, workdir):
    return checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.img'))


@pytest.mark.parametrize('method', ['rebase', 'copy', 'backup', 'stream',
                                    'auto'])
def test_method_gives_a_flat_equal_image_and_leaves_nothing(
        method, driver, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, recorded, listener, caplog):
    conf('snapdriver', capture_method=method)
    inst = make_instance()
    image = make_image(inst)
    staged = {}
    listener(lambda uuid, phase, done, total: staged.update(
        staged_files(snapshots_dir)))
    umask = os.umask(0o022)  # nova-compute's usual; group and others read
    try:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)
    finally:
        os.umask(umask)

    # What was staged on the way: under a directory nobody can guess the
    # name of, files for their owner alone, whatever the umask.
    work_dir = os.path.basename(recorded[0]['work_dir'])
    assert work_dir != image['id'] and work_dir.startswith(image['id'][:8])
    files = {p: m for p, m in staged.items() if p != work_dir and
             not p.startswith(os.path.join(work_dir, 'nbd'))}
    assert files and set(files.values()) == {0o600}, staged
    assert staged[work_dir] in (0o700, 0o701), staged

    # Hashed once, as Glance hashed the image the instance booted from.
    assert 'image hashed with sha512: needs' in caplog.text
    assert 'sha512 verified' in caplog.text

    # auto: stream on this host (backup API and libnbd are there).
    expected = 'stream' if method == 'auto' else method
    assert [r['capture_method'] for r in recorded] == [expected]
    # Only rebase undefines the domain, so only its record may redefine it.
    assert recorded[0]['persistent'] == (expected == 'rebase')
    assert glance_client.images.get(image['id']).status == 'active'
    local = download(glance_client, image['id'], workdir)
    assert 'backing-filename' not in checks.image_info(local, 'qcow2')
    assert checks.same_content(local, inst.disk_path)
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)


def test_an_instance_whose_image_glance_lacks_hashes_both_ways(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, workdir, caplog):
    """Booted from an image deleted since: sha512 and md5, as before."""
    conf('snapdriver', capture_method='stream')
    inst = make_instance(image_ref='0d5d0b4e-6d6a-4a43-9b8e-d31ab0c7e000')
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert 'image hashed with sha512 and md5: needs' in caplog.text
    assert 'sha512 verified' in caplog.text
    local = download(glance_client, image['id'], workdir)
    assert checks.same_content(local, inst.disk_path)
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)


@pytest.mark.parametrize('method', ['stream', 'rebase'])
def test_verify_upload_hash_off_hashes_nothing_and_checks_the_size(
        method, driver, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, caplog):
    """[snapdriver] verify_upload_hash = False: the size alone compared."""
    conf('snapdriver', capture_method=method, verify_upload_hash=False)
    inst = make_instance()
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert 'image not hashed (verify_upload_hash is off): needs' in \
        caplog.text
    assert '(size verified)' in caplog.text
    assert 'WARNING' not in caplog.text
    # Glance hashed what it stored, as it always does.
    stored = glance_client.images.get(image['id'])
    assert stored.status == 'active'
    assert stored.os_hash_algo == 'sha512' and stored.os_hash_value
    local = download(glance_client, image['id'], workdir)
    assert checks.same_content(local, inst.disk_path)
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)


def test_backup_is_point_in_time_at_backup_begin(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, workdir, listener):
    """The image holds markers 1..K, K fixed when backupBegin took effect.

    The guest writes marker k (fsync'd) and only then prints "MARK k" and
    goes on with k+1, so at any instant the disk holds the printed markers
    plus at most one more.  ``before`` is the last mark printed before the
    snapshot began; ``at_begin`` the last one printed when the driver's
    journal step 'backup' ran, right after backupBegin returned (a
    console read later than the instant of the backup can only see more).
    So a point in time at the backup's start gives
    ``before <= K <= at_begin + 1``, whereas a copy converged at its end
    (rebase, copy) may hold markers written during the whole job.  The
    guest keeps writing during and after the backup (``after`` grows
    past K), and none of those later markers may be in the image, with no
    gap below K (check_consistent).
    """
    conf('snapdriver', capture_method='backup')
    inst = make_instance(mode='markers', disk_mib=256)
    test_guest.wait_for_console(inst.console_log, 'MARK 20', timeout=60)
    marks = {}

    def at_begin(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'step:backup':
            marks['at_begin'] = test_guest.last_console_mark(
                inst.console_log)
    listener(at_begin)
    before = test_guest.last_console_mark(inst.console_log)
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    test_guest.wait_for_console(
        inst.console_log, 'MARK %d\n' % (marks['at_begin'] + 10), timeout=60)
    after = test_guest.last_console_mark(inst.console_log)
    local = download(glance_client, image['id'], workdir)
    k = test_guest.check_consistent(test_guest.read_markers(local, 'qcow2'))
    assert before <= k <= marks['at_begin'] + 1, (before, k, marks)
    assert after > k + 1
    assert inst.is_persistent()
    assert checks.leftovers(snapshots_dir) == []
    os.unlink(local)


def test_copy_cancelled_from_outside_fails_and_changes_nothing(
        driver, context, conf, make_instance, make_image, listener,
        snapshots_dir, workdir):
    conf('snapdriver', capture_method='copy', block_job_bandwidth=1)
    inst = make_instance()
    reference = checks.reference_copy(inst, workdir)
    outsider = libvirt.open(libvirtd.URI)
    aborted = []

    def abort_once(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'copy' and not aborted:
            # The domain stays persistent during a copy: check it mid-job.
            dom = outsider.lookupByUUIDString(uuid)
            aborted.append(bool(dom.isPersistent()))
            dom.blockJobAbort('vda', 0)
    listener(abort_once)
    image = make_image(inst)

    with pytest.raises(exception.BlockJobFailed) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    outsider.close()
    assert aborted == [True], 'not cancelled, or transient during the copy'
    assert 'cancelled' in str(err.value)
    assert_instance_as_before(inst, snapshots_dir, reference)
    os.unlink(reference)


@pytest.fixture
def outsider():
    """A second libvirt connection: whoever acts on the domain meanwhile."""
    conn = libvirt.open(libvirtd.URI)
    yield conn
    conn.close()


def once_backup_begun(inst, listener, outsider, action):
    """Run ``action(domain)`` once, right after backupBegin returned.

    Returns the list that will hold what ``action`` returned.
    """
    results = []

    def once(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'step:backup' and not results:
            results.append(action(outsider.lookupByUUIDString(uuid)))
    listener(once)
    return results


def abort_job(domain):
    """Abort the domain's job; say whether the domain was persistent."""
    persistent = bool(domain.isPersistent())
    domain.abortJob()
    return persistent


def test_backup_aborted_from_outside_fails_and_changes_nothing(
        driver, context, conf, make_instance, make_image, listener,
        outsider, snapshots_dir, workdir):
    conf('snapdriver', capture_method='backup')
    # A larger disk, so the backup is still running when it is aborted.
    inst = make_instance(disk_mib=2048)
    reference = checks.reference_copy(inst, workdir)
    aborted = once_backup_begun(inst, listener, outsider, abort_job)
    image = make_image(inst)

    with pytest.raises(exception.BackupFailed) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert aborted == [True], 'not aborted, or transient during the backup'
    assert 'cancelled from outside' in str(err.value)
    assert inst.uuid in str(err.value)
    assert_instance_as_before(inst, snapshots_dir, reference)
    os.unlink(reference)


def test_backup_timeout_aborts_the_backup_and_names_the_option(
        driver, context, conf, make_instance, make_image, listener,
        outsider, snapshots_dir, workdir):
    """[snapdriver] block_job_timeout reached during a backup.

    The backup is throttled to 1 MiB/s from outside as soon as it has
    begun, so its 2 GiB cannot be done within the 1 s timeout.  512 MiB
    of them hold data: unthrottled, the backup of an almost empty disk
    can end before the throttle reaches it.
    """
    conf('snapdriver', capture_method='backup', block_job_timeout=1)
    inst = make_instance(disk_mib=2048, prefill_markers_mib=512)
    reference = checks.reference_copy(inst, workdir)
    throttled = once_backup_begun(inst, listener, outsider,
                                  checks.throttle_block_jobs)
    image = make_image(inst)

    with pytest.raises(exception.BackupTimeout) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert throttled and throttled[0], 'no backup job to throttle'
    message = str(err.value)
    assert 'not complete after 1 s' in message
    assert 'block_job_timeout' in message
    assert 'The backup was aborted' in message
    assert inst.uuid in message
    assert_instance_as_before(inst, snapshots_dir, reference)
    os.unlink(reference)


@pytest.mark.parametrize('method,compression_type', [
    ('rebase', 'zlib'), ('rebase', 'zstd'), ('backup', 'zstd'),
    ('auto', 'zstd')])
def test_compressed_image_uses_the_compression_type(
        method, compression_type, driver, context, conf, make_instance,
        make_image, glance_client, snapshots_dir, workdir, recorded):
    """[libvirt] snapshot_compression with [snapdriver] compression_type.

    With backup the backup is a flat qcow2 beside the image, compressed by
    one more convert pass (no single copy); so auto picks copy here.
    """
    conf('libvirt', snapshot_compression=True)
    conf('snapdriver', capture_method=method,
         compression_type=compression_type)
    inst = make_instance()
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    expected = 'copy' if method == 'auto' else method
    assert [r['capture_method'] for r in recorded] == [expected]
    local = download(glance_client, image['id'], workdir)
    info = checks.image_info(local, 'qcow2')
    assert 'backing-filename' not in info
    assert info['format-specific']['data']['compression-type'] == \
        compression_type
    assert checks.same_content(local, inst.disk_path)
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)


# The record is written by the test, not planned by the driver.
@pytest.mark.fallback_allowed
def test_recovery_aborts_a_leftover_backup_and_never_redefines(
        conf, make_instance, libvirt_conn, snapshots_dir):
    """A backup left running by a dead nova-compute, then recovery.

    The record says capture_method backup and, as for every method but
    rebase, persistent False: recovery must abort the backup job, remove
    the temp files and the record, and must not redefine the domain (the
    record's XML carries a marker description that must not appear).
    """
    inst = make_instance(disk_mib=4096)
    dom = inst.lookup()
    work_dir = os.path.join(snapshots_dir, 'c0ffee00-1234-4abc-8def-'
                            '0123456789ab')
    os.makedirs(work_dir)
    os.chmod(work_dir, 0o701)
    saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(
        '</name>', '</name><description>redefined</description>', 1)
    record = journal.begin(
        instance_uuid=inst.uuid, instance_name=inst.name,
        image_id=os.path.basename(work_dir), disk_path=inst.disk_path,
        disk_dev='vda', work_dir=work_dir, xml=saved, persistent=False,
        capture_method='backup', phase='backup')
    dom.backupBegin(
        "<domainbackup mode='push'><disks><disk name='vda' backup='yes' "
        "type='file'><target file='%s/image'/><driver type='qcow2'/>"
        "</disk></disks></domainbackup>" % work_dir, None, 0)
    os.close(record._lock_fd)  # the process that held it is "dead"

    reports = recovery.recover(libvirt_conn)

    assert [r['state'] for r in reports] == ['recovered']
    assert not any('redefined' in a for a in reports[0]['actions'])
    assert reports[0]['actions'][0].startswith('aborted the backup job')
    assert inst.lookup().jobStats().get('type') == \
        libvirt.VIR_DOMAIN_JOB_NONE
    assert 'redefined' not in inst.lookup().XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert_instance_as_before(inst, snapshots_dir)
