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

"""``capture_method = stream`` on real libvirt, QEMU, libnbd and Glance.

The running disk is exported by a pull-mode backup, read over NBD and
streamed to Glance with no temp image.  The image must be the disk as it
was when the stream began (a guest writing numbered markers meanwhile
proves it), pass ``qemu-img check`` and compare equal to the disk, in raw
and qcow2, and be accepted by Glance's format inspector.  Afterwards the
domain is persistent and running with no job, and nothing is left in the
snapshots directory or the journal.  A scratch file that grows past its
cap ends the backup, not the guest's writes, even while nothing reads the
export.
"""

import os
import pwd
import stat
import subprocess
import time

import glanceclient.exc
import libvirt
from nova import exception as nova_exception
import pytest

from nova_snapdriver import exception
from nova_snapdriver import journal
from nova_snapdriver import recovery
from tests.testbed import checks
from tests.testbed import child as test_child
from tests.testbed import guest as test_guest
from tests.testbed import libvirtd

MiB = 1024 * 1024


def assert_instance_as_before(inst, snapshots_dir):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    dom = inst.lookup()
    assert checks.block_jobs(dom) == {}
    assert dom.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


def assert_backup_ended_not_the_guest(error, glance_client, image, inst,
                                      snapshots_dir):
    """The scratch guard's outcome: no image, and the guest writes on."""
    assert 'stream_scratch_max_mb' in str(error)
    assert glance_client.images.get(image['id']).status != 'active'
    # The guest's writes went on: it prints new marks after the abort.
    mark = test_guest.last_console_mark(inst.console_log)
    test_guest.wait_for_console(inst.console_log, 'MARK %d\n' % (mark + 5),
                                timeout=60)
    assert_instance_as_before(inst, snapshots_dir)


def download(glance_client, image_id, workdir):
    return checks.download(glance_client, image_id,
                           os.path.join(workdir, image_id + '.img'))


@pytest.mark.parametrize('disk_mib', [64, 700], ids=['64M', '700M'])
@pytest.mark.parametrize('fmt', ['qcow2', 'raw'])
def test_stream_gives_the_disk_and_leaves_nothing(
        fmt, disk_mib, driver, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, listener):
    """700 MiB: more than one L2 table of 64 KiB clusters covers."""
    conf('snapdriver', capture_method='stream')
    conf('libvirt', snapshot_image_format=fmt)
    inst = make_instance(disk_mib=disk_mib)
    reference = checks.reference_copy(inst, workdir)
    steps = []
    listener(lambda uuid, phase, done, total: steps.append(phase)
             if uuid == inst.uuid and phase.startswith('step:') else None)
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert steps == ['step:streaming', 'step:streaming']
    stored = glance_client.images.get(image['id'])
    assert stored.status == 'active'
    assert stored.disk_format == fmt
    local = download(glance_client, image['id'], workdir)
    assert stored.size == os.path.getsize(local)
    if fmt == 'qcow2':
        subprocess.run(['qemu-img', 'check', '-f', 'qcow2', local],
                       check=True, capture_output=True)
        assert 'backing-filename' not in checks.image_info(local, 'qcow2')
    else:
        assert os.path.getsize(local) == inst.disk_size
    assert checks.same_content(local, reference, fmt, 'qcow2')
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)
    os.unlink(reference)


def _rss():
    """This process's resident memory, in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS in /proc/self/status')


def test_stream_holds_a_few_mib_of_the_disk_not_all_of_it(
        driver, context, conf, make_instance, make_image, glance_client):
    """nova-compute must not grow by the image with every snapshot.

    Debian 12's libnbd binding never frees a buffer given to aio_pread:
    reading a disk that way grew the process by all it read.  512 MiB of
    data are streamed here; the stream holds at most a few MiB at a time.
    """
    conf('snapdriver', capture_method='stream')
    inst = make_instance(disk_mib=700, prefill_markers_mib=512)
    image = make_image(inst)
    before = _rss()

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    grown = _rss() - before
    assert glance_client.images.get(image['id']).size > 512 * MiB
    assert grown < 96 * MiB, 'the process grew by %d MiB' % (grown // MiB)


def test_stream_is_point_in_time_at_its_start(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, workdir, listener):
    """The image holds markers 1..K, K fixed when the backup began.

    As for push-mode backup (test_capture_methods): ``before`` is the last
    mark printed before the snapshot, ``at_begin`` the last one printed
    when the driver journaled 'streaming' right after backupBegin.  The
    guest keeps writing during the stream; none of that is in the image.
    """
    conf('snapdriver', capture_method='stream')
    inst = make_instance(mode='markers', disk_mib=256)
    test_guest.wait_for_console(inst.console_log, 'MARK 20', timeout=60)
    marks = {}

    def at_begin(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'step:streaming' and \
                'at_begin' not in marks:
            marks['at_begin'] = test_guest.last_console_mark(
                inst.console_log)

    def slow_reader(uuid, phase, done, total):
        # A slow Glance: the guest writes on while the export is read.
        if uuid == inst.uuid and phase == 'upload':
            time.sleep(0.002)
    listener(at_begin)
    listener(slow_reader)
    before = test_guest.last_console_mark(inst.console_log)
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    after = test_guest.last_console_mark(inst.console_log)
    local = download(glance_client, image['id'], workdir)
    k = test_guest.check_consistent(test_guest.read_markers(local, 'qcow2'))
    assert before <= k <= marks['at_begin'] + 1, (before, k, marks)
    assert after > k + 1, 'the guest wrote nothing while streaming'
    assert_instance_as_before(inst, snapshots_dir)
    os.unlink(local)


def test_scratch_over_its_cap_ends_the_backup_not_the_guest(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, listener):
    conf('snapdriver', capture_method='stream', stream_scratch_max_mb=1)
    inst = make_instance(mode='markers', disk_mib=256, prefill_markers_mib=64)
    test_guest.wait_for_console(inst.console_log, 'MARK 5', timeout=60)

    def slow_reader(uuid, phase, done, total):
        # A slow Glance (about 2.5 MiB/s): the guest's copy-before-writes
        # pile up in the scratch file meanwhile.
        if uuid == inst.uuid and phase == 'upload':
            time.sleep(0.4)
    listener(slow_reader)
    image = make_image(inst)

    with pytest.raises(exception.ScratchSpaceExhausted) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert_backup_ended_not_the_guest(err.value, glance_client, image, inst,
                                      snapshots_dir)


def test_a_stalled_upload_still_ends_the_backup_before_the_scratch_fills(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, listener):
    """Nothing reads the export while Glance stalls; the guest writes on.

    The scratch is watched on its own, not only when the export is read:
    the backup ends during the stall, not after it.
    """
    conf('snapdriver', capture_method='stream', stream_scratch_max_mb=1)
    inst = make_instance(mode='markers', disk_mib=256, prefill_markers_mib=64)
    test_guest.wait_for_console(inst.console_log, 'MARK 5', timeout=60)
    stall = {}

    def stall_once(uuid, phase, done, total):
        if uuid != inst.uuid or phase != 'upload' or stall:
            return
        stall['at'] = done
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = inst.lookup().jobStats()
            if stats.get('type') == libvirt.VIR_DOMAIN_JOB_NONE:
                stall['ended_after'] = 30 - (deadline - time.monotonic())
                return
            time.sleep(0.2)
    listener(stall_once)
    image = make_image(inst)

    with pytest.raises(exception.ScratchSpaceExhausted) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert 'ended_after' in stall, (
        'the backup ran on through a 30 s stall: %s' % stall)
    assert_backup_ended_not_the_guest(err.value, glance_client, image, inst,
                                      snapshots_dir)


def test_glance_killed_mid_stream_fails_cleanly(
        driver, context, conf, make_instance, make_image, glance,
        glance_client, listener, snapshots_dir):
    """The backup is ended and nothing is left; the guest never noticed."""
    conf('snapdriver', capture_method='stream')
    conf('glance', num_retries=0)
    inst = make_instance(disk_mib=256, prefill_markers_mib=64)
    image = make_image(inst)
    killed = []

    def kill_at_4_mib(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'upload' and \
                done >= 4 * MiB and not killed:
            glance.kill()
            killed.append(done)
    listener(kill_at_4_mib)

    with pytest.raises(nova_exception.GlanceConnectionFailed) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert killed, 'the stream ended before Glance was killed'
    assert 'onnection' in str(err.value), err.value
    assert_instance_as_before(inst, snapshots_dir)


def test_nova_compute_killed_mid_stream_is_repaired_by_recover(
        nova_conf, make_instance, make_image, glance_client, image_api,
        context, libvirt_conn, snapshots_dir):
    """SIGKILLed right after backupBegin: recovery ends the pull backup."""
    inst = make_instance(disk_mib=256)
    image = make_image(inst)
    child = test_child.run_until(
        nova_conf, inst, image['id'], 'streaming',
        options={'snapdriver': {'capture_method': 'stream'}})
    record = os.path.join(journal.directory(), image['id'] + '.json')
    work_dir = journal.load(record).data['work_dir']
    assert inst.lookup().jobStats().get('operation') == \
        libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
    assert sorted(os.listdir(work_dir)) == ['nbd', 'scratch.qcow2']
    # Named so that nobody can guess it, and only for its owner.
    assert os.path.basename(work_dir) != image['id']
    assert os.listdir(snapshots_dir) == [os.path.basename(work_dir)]
    # QEMU (libvirt-qemu) made the socket in the directory of its group.
    export = os.path.join(work_dir, 'nbd')
    assert os.listdir(export) == ['sock']
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o730
    assert os.stat(os.path.join(export, 'sock')).st_uid == \
        pwd.getpwnam(libvirtd.QEMU_USER).pw_uid

    test_child.kill9(child)
    reports = recovery.recover(libvirt_conn, image_api, context)

    assert [r['state'] for r in reports] == ['recovered'], reports
    assert any('deleted image' in a for a in reports[0]['actions'])
    with pytest.raises(glanceclient.exc.HTTPNotFound):
        glance_client.images.get(image['id'])
    assert_instance_as_before(inst, snapshots_dir)
