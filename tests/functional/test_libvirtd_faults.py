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

"""libvirtd killed (SIGKILL) while a snapshot's block job runs.

As on a busy compute host: a package upgrade, an OOM kill or a crash takes
libvirtd away mid-job and it comes back a moment later; QEMU keeps running.
The snapshot's domain handle then belongs to a dead connection.  For each
capture method the snapshot must end, and afterwards the domain is
persistent and running with no job, its disk as before, and no temp file
or journal record is left: either the snapshot repaired everything itself
through a new connection, or it kept its record and recovery (what
``init_host``, the periodic task and ``nova-snapdriver-manage recover``
run) finishes the repair.
"""

import os
import subprocess
import threading

import libvirt
import pytest

from nova_snapdriver import exception
from nova_snapdriver import journal
from nova_snapdriver import recovery
from tests.testbed import checks
from tests.testbed import libvirtd

# How long libvirtd stays away: several block-job polls.  Either well
# within [snapdriver] libvirt_reconnect_timeout (the snapshot repairs
# everything itself), or longer than it (recovery must finish the job).
DOWN_SECONDS = 3
RECONNECT_TIMEOUT = {'short-outage': 60, 'long-outage': 1}
LONG_DOWN_SECONDS = 8
QEMU = '/usr/bin/qemu-system-x86_64'


@pytest.fixture
def restart_libvirtd():
    """kill(down) -> SIGKILL libvirtd now, start it ``down`` s later."""
    timers = []

    def kill(down=DOWN_SECONDS):
        pid = libvirtd.kill()
        timer = threading.Timer(down, libvirtd.ensure_running)
        timer.start()
        timers.append(timer)
        return pid

    def wait():
        for timer in timers:
            timer.join()
        libvirtd.ensure_running()

    kill.wait = wait
    yield kill
    wait()


def assert_all_repaired(inst, reference, snapshots_dir, libvirt_conn):
    dom = libvirt_conn.lookupByUUIDString(inst.uuid)
    assert dom.isPersistent(), 'domain left transient'
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(dom) == {}
    assert dom.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    assert checks.same_content(inst.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


@pytest.mark.parametrize('outage', ['short-outage', 'long-outage'])
@pytest.mark.parametrize('method', ['rebase', 'copy', 'backup'])
def test_libvirtd_killed_during_the_block_job(
        method, outage, driver, context, conf, make_instance, make_image,
        listener, libvirt_conn, restart_libvirtd, image_api, snapshots_dir,
        workdir):
    conf('snapdriver', capture_method=method,
         libvirt_reconnect_timeout=RECONNECT_TIMEOUT[outage])
    down = LONG_DOWN_SECONDS if outage == 'long-outage' else DOWN_SECONDS
    if method == 'backup':
        # Slowed through QEMU's monitor once begun: still running when
        # libvirtd dies (512 MiB of data: not done before the throttle).
        inst = make_instance(disk_mib=2048, prefill_markers_mib=512)
        step = 'step:backup'
    else:
        conf('snapdriver', block_job_bandwidth=1)
        inst = make_instance()
        step = 'step:copying'
    reference = checks.reference_copy(inst, workdir)
    killed = []

    def on_step(uuid, phase, done, total):
        if uuid == inst.uuid and phase == step and not killed:
            if method == 'backup':
                assert checks.throttle_block_jobs(
                    libvirt_conn.lookupByUUIDString(uuid)), 'no backup job'
            killed.append(restart_libvirtd(down))
    listener(on_step)
    image = make_image(inst)

    with pytest.raises(exception.SnapshotError) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert killed, 'libvirtd was never killed'
    message = str(err.value)
    assert inst.uuid in message
    if outage == 'short-outage':
        # Repaired through a new connection, before the snapshot returned.
        assert isinstance(err.value, exception.LibvirtConnectionLost), \
            message
        assert 'the instance is as it was. Retry the snapshot.' in message
        assert journal.paths() == []
    else:
        # Still away when the snapshot gave up: it says so, kept its record
        # and its work dir (the job may still write there); once libvirtd
        # is back, recovery (as periodically or at the next start) ends it.
        restart_libvirtd.wait()
        assert len(journal.paths()) == 1
        if method == 'rebase':
            assert isinstance(err.value, exception.DomainRedefineFailed)
            assert 'virsh define' in message
        else:
            assert isinstance(err.value, exception.LibvirtConnectionLost)
            assert 'nova-snapdriver-manage recover' in message
        reports = recovery.recover(libvirt_conn, image_api, context)
        # The record is repaired; with rebase, the saved XML the failed
        # redefine wrote (0600, secrets) goes too.
        assert [r['state'] for r in reports if r['record']] == \
            ['recovered'], reports
        assert len(reports) == (2 if method == 'rebase' else 1), reports
    assert_all_repaired(inst, reference, snapshots_dir, libvirt_conn)
    os.unlink(reference)


@pytest.mark.parametrize('outage', ['short-outage', 'long-outage'])
def test_libvirtd_killed_during_a_stream(
        outage, driver, context, conf, make_instance, make_image, listener,
        libvirt_conn, restart_libvirtd, image_api, glance_client,
        snapshots_dir, workdir):
    """The stream reads QEMU's export, not libvirtd: the image is whole.

    Only ending the pull backup needs libvirtd.  Back within
    ``libvirt_reconnect_timeout``, the snapshot ends it itself; still away,
    the snapshot keeps its record, and recovery ends the backup once
    libvirtd is back.  Either way the image is the disk, uploaded once.
    """
    conf('snapdriver', capture_method='stream',
         libvirt_reconnect_timeout=RECONNECT_TIMEOUT[outage])
    down = LONG_DOWN_SECONDS if outage == 'long-outage' else DOWN_SECONDS
    inst = make_instance(disk_mib=256, prefill_markers_mib=64)
    reference = checks.reference_copy(inst, workdir)
    killed = []

    def on_step(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'step:streaming' and not killed:
            killed.append(restart_libvirtd(down))
    listener(on_step)
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert killed, 'libvirtd was never killed'
    restart_libvirtd.wait()
    if outage == 'long-outage':
        # The backup could not be ended: the record says so, for recovery.
        assert len(journal.paths()) == 1
        reports = recovery.recover(libvirt_conn, image_api, context)
        assert [r['state'] for r in reports if r['record']] == \
            ['recovered'], reports
    stored = glance_client.images.get(image['id'])
    assert stored.status == 'active'
    path = checks.download(glance_client, image['id'],
                           os.path.join(workdir, image['id'] + '.img'))
    try:
        assert checks.same_content(path, reference)
    finally:
        os.unlink(path)
    assert_all_repaired(inst, reference, snapshots_dir, libvirt_conn)
    os.unlink(reference)


@pytest.fixture
def emulator(workdir):
    """A path to QEMU that a test can take away: libvirt's define checks it.

    A running QEMU does not care; libvirt's defineXML then fails for real.
    """
    path = os.path.join(workdir, 'qemu-system-x86_64-%d' % os.getpid())
    os.symlink(QEMU, path)
    yield path
    if os.path.lexists(path):
        os.unlink(path)


def test_redefine_failing_after_a_block_job_timeout_names_the_xml(
        driver, context, conf, make_instance, make_image, listener,
        libvirt_conn, image_api, snapshots_dir, workdir, emulator):
    """The error an operator sees is the one that matters.

    The copy times out (bandwidth 1 MiB/s, timeout 1 s); meanwhile the
    domain's emulator went away, so the redefine fails.  The error raised
    names the redefine, the saved XML and ``virsh define``, with the
    timeout as its cause; the record is kept, and once the operator did
    what it says, recovery finishes the rest.
    """
    conf('snapdriver', capture_method='rebase', block_job_bandwidth=1,
         block_job_timeout=1)
    inst = make_instance(emulator=emulator)
    reference = checks.reference_copy(inst, workdir)

    def on_step(uuid, phase, done, total):
        if uuid == inst.uuid and phase == 'step:undefined':
            os.unlink(emulator)
    listener(on_step)
    image = make_image(inst)

    with pytest.raises(exception.DomainRedefineFailed) as err:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    message = str(err.value)
    xml_path = os.path.join(snapshots_dir, '%s.xml' % inst.uuid)
    assert "virsh define %s" % xml_path in message
    assert isinstance(err.value.__cause__, exception.BlockJobTimeout)
    assert os.stat(xml_path).st_mode & 0o777 == 0o600
    dom = libvirt_conn.lookupByUUIDString(inst.uuid)
    assert not dom.isPersistent()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(dom) == {}
    assert len(journal.paths()) == 1
    # What the error tells the operator to do, once the cause is fixed.
    os.symlink(QEMU, emulator)
    subprocess.run(['virsh', '-c', libvirtd.URI, 'define', xml_path],
                   check=True, capture_output=True)
    reports = recovery.recover(libvirt_conn, image_api, context)
    assert [r['state'] for r in reports if r['record']] == ['recovered']
    assert_all_repaired(inst, reference, snapshots_dir, libvirt_conn)
    os.unlink(reference)
