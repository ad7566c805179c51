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

"""nova-compute killed in the middle of a snapshot, then recovery.

The snapshot runs in a child process (tests/testbed/child.py) that stops at
a chosen step and is killed there with SIGKILL: no cleanup code runs, as
when nova-compute is OOM-killed.  Then ``nova-snapdriver-manage recover``
runs, as an operator would run it (nova-compute runs the same recovery from
``init_host``), and everything must be repaired: the domain persistent and
running, its disk as before, no block job, no temp files, the image not
left queued, the journal empty.

Recovery touches only what is the dead snapshot's: a stale record next to
a new snapshot of the same instance in flight leaves that snapshot's job
and domain alone (``test_stale_record_leaves_a_snapshot_in_flight_alone``).
"""

import json
import os
import stat
import time
from xml.etree import ElementTree

import libvirt
import pytest

from nova_snapdriver import journal
from tests.testbed import checks
from tests.testbed import child as test_child
from tests.testbed.recover import image_status
from tests.testbed.recover import manage
from tests.testbed.recover import recover_all


@pytest.mark.parametrize('stop_at', ['overlay', 'undefined', 'copying',
                                     'extracting', 'upload-data'])
def test_killed_snapshot_is_repaired_by_recover(
        stop_at, nova_conf, conf, instance, make_image, glance_client,
        reference, snapshots_dir):
    if stop_at == 'copying':
        # Slow the mirror so it is still running when the child dies.
        conf('snapdriver', block_job_bandwidth=1)
    image = make_image(instance)
    child = test_child.run_until(nova_conf, instance, image['id'], stop_at)
    record = os.path.join(journal.directory(), image['id'] + '.json')
    assert os.path.exists(record)
    if stop_at in ('undefined', 'copying'):
        assert not instance.is_persistent()
    if stop_at == 'copying':
        assert checks.block_jobs(instance.lookup()) != {}

    test_child.kill9(child)
    recover_all(nova_conf, instance, image, glance_client, reference,
                snapshots_dir)


@pytest.mark.parametrize('method,stop_at', [
    ('copy', 'copying'), ('backup', 'backup'), ('stream', 'streaming'),
    ('stream', 'upload-data')])
def test_killed_mid_job_is_repaired_for_every_method(
        method, stop_at, nova_conf, instance, make_image, glance_client,
        reference, snapshots_dir):
    """kill -9 while the method's block job runs, then recover.

    copy's mirror, backup's push job, and stream's pull backup both
    before its first read and mid-upload.
    """
    image = make_image(instance)
    child = test_child.run_until(
        nova_conf, instance, image['id'], stop_at,
        options={'snapdriver': {'capture_method': method}})
    path = os.path.join(journal.directory(), image['id'] + '.json')
    with open(path) as f:
        record = json.load(f)
    assert record['capture_method'] == method, record
    # None of these undefines the domain, and each has its job running.
    assert instance.is_persistent()
    domain = instance.lookup()
    if method == 'copy':
        assert checks.block_jobs(domain) != {}
    else:
        assert domain.jobStats().get('type') != libvirt.VIR_DOMAIN_JOB_NONE

    test_child.kill9(child)
    recover_all(nova_conf, instance, image, glance_client, reference,
                snapshots_dir)
    assert domain.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE


@pytest.mark.parametrize('stop_at', ['suspended', 'upload-data'])
def test_killed_with_the_guest_saved_is_started_again_by_recover(
        stop_at, nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir):
    """disable_libvirt_livesnapshot, streamed: kill -9 with the guest saved.

    Right after the managed save, and mid-upload (qemu-nbd reading).
    recover starts the guest from its saved state: a new QEMU, running.
    """
    image = make_image(instance)
    with open('/run/libvirt/qemu/%s.pid' % instance.name) as f:
        qemu_before = f.read()
    child = test_child.run_until(
        nova_conf, instance, image['id'], stop_at,
        options={'workarounds': {'disable_libvirt_livesnapshot': True},
                 'snapdriver': {'capture_method': 'stream'}})
    path = os.path.join(journal.directory(), image['id'] + '.json')
    with open(path) as f:
        record = json.load(f)
    assert record['saved'] is True, record
    assert record['capture_method'] == 'stream', record
    domain = instance.lookup()
    assert domain.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert domain.hasManagedSaveImage(0)

    test_child.kill9(child)
    recover_all(nova_conf, instance, image, glance_client, reference,
                snapshots_dir)
    assert not domain.hasManagedSaveImage(0)
    with open('/run/libvirt/qemu/%s.pid' % instance.name) as f:
        assert f.read() != qemu_before


def test_periodic_recovery_repairs_without_a_restart(
        nova_conf, conf, instance, make_image, glance_client, reference,
        snapshots_dir):
    """A running nova-compute repairs a snapshot another one left.

    The serving child started before the snapshot died, so its start-up
    recovery found nothing: only its periodic run can repair it.
    """
    server = test_child.serve(
        nova_conf, options={'snapdriver': {'recovery_interval': 1}})
    try:
        image = make_image(instance)
        child = test_child.run_until(nova_conf, instance, image['id'],
                                     'undefined')
        test_child.kill9(child)
        assert not instance.is_persistent()

        wait_for(lambda: journal.paths() == [], 'the periodic recovery',
                 timeout=120)
        assert instance.is_persistent()
        assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
        assert checks.block_jobs(instance.lookup()) == {}
        assert checks.same_content(instance.disk_path, reference)
        assert checks.leftovers(snapshots_dir) == []
        wait_for(lambda: image_status(glance_client, image['id']) ==
                 'deleted', 'the queued image to be deleted', timeout=60)
    finally:
        test_child.kill9(server)


def wait_for(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %d s waiting for %s'
                                 % (timeout, what))
        time.sleep(0.2)


def test_snapshot_in_flight_is_left_alone_and_its_record_is_private(
        nova_conf, conf, instance, make_image, reference, snapshots_dir):
    conf('snapdriver', block_job_bandwidth=1)
    image = make_image(instance)
    child = test_child.run_until(nova_conf, instance, image['id'], 'copying')
    try:
        record = os.path.join(journal.directory(), image['id'] + '.json')
        assert stat.S_IMODE(os.stat(record).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(journal.directory()).st_mode) == 0o700

        status = manage(nova_conf, 'status')
        assert 'phase copying' in status.stdout
        assert 'in flight' in status.stdout
        result = manage(nova_conf, 'recover')
        assert image['id'] + ': in flight' in result.stdout
        assert not instance.is_persistent(), 'recovery touched a live one'
    finally:
        test_child.kill9(child)
    assert manage(nova_conf, 'recover').returncode == 0
    assert instance.is_persistent()
    assert checks.leftovers(snapshots_dir) == []


def test_dry_run_changes_nothing(nova_conf, instance, make_image):
    image = make_image(instance)
    test_child.kill9(test_child.run_until(nova_conf, instance, image['id'],
                                          'undefined'))

    dry = manage(nova_conf, 'recover', '--dry-run')

    assert 'would do: redefined the domain' in dry.stdout
    assert not instance.is_persistent()
    assert len(journal.paths()) == 1
    assert manage(nova_conf, 'recover').returncode == 0
    assert instance.is_persistent()


def test_corrupt_record_is_reported_and_skipped(nova_conf, instance,
                                                make_image):
    os.makedirs(journal.directory(), mode=0o700, exist_ok=True)
    corrupt = os.path.join(journal.directory(), 'truncated.json')
    with open(corrupt, 'w') as f:
        f.write('{"version": 1, "instance_uu')
    image = make_image(instance)
    test_child.kill9(test_child.run_until(nova_conf, instance, image['id'],
                                          'undefined'))
    try:
        result = manage(nova_conf, 'recover')

        assert result.returncode == 1
        assert 'corrupt' in result.stdout
        assert image['id'] + ': recovered' in result.stdout
        assert instance.is_persistent()
    finally:
        os.unlink(corrupt)
        journal.discard_lock(corrupt)


def test_nova_compute_start_repairs_an_interrupted_snapshot(
        nova_conf, instance, make_image, reference, snapshots_dir):
    """init_host runs the same recovery, before nova looks at instances."""
    image = make_image(instance)
    test_child.kill9(test_child.run_until(nova_conf, instance, image['id'],
                                          'undefined'))
    assert not instance.is_persistent()

    from tests.testbed import nova_env
    nova_env.load_driver()   # init_host, as a restarted nova-compute

    assert instance.is_persistent()
    assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


def mirror_target(domain, disk='vda'):
    """The file the block copy on ``disk`` writes into, from the live XML."""
    xml = ElementTree.fromstring(domain.XMLDesc(0))
    for element in xml.findall('./devices/disk'):
        if element.find('target').get('dev') == disk:
            source = element.find('mirror/source')
            return None if source is None else source.get('file')
    return None


@pytest.mark.parametrize('stale_at', ['undefined', 'upload-data'])
def test_stale_record_leaves_a_snapshot_in_flight_alone(
        stale_at, nova_conf, instance, make_image, glance_client, reference,
        snapshots_dir):
    """A stale record, then a new snapshot of the instance, then recover.

    'undefined': the stale snapshot left the domain transient, and the new
    one mirrors the transient domain: recover must neither abort the new
    job nor redefine the domain from the stale XML while it runs; it
    deletes the stale work dir and image and keeps the stale record (its
    redefine waits).  'upload-data': the stale snapshot had restored the
    domain, the new one undefined it: recover clears the stale record
    whole and leaves the domain transient, as the new snapshot has it.
    Then the new snapshot is killed too, and one recover ends it all.
    """
    stale_image = make_image(instance, 'stale')
    test_child.kill9(test_child.run_until(nova_conf, instance,
                                          stale_image['id'], stale_at))
    stale = os.path.join(journal.directory(), stale_image['id'] + '.json')
    stale_dir = journal.load(stale).data['work_dir']
    assert os.path.isdir(stale_dir)
    assert instance.is_persistent() == (stale_at == 'upload-data')

    # The new snapshot's process repairs interrupted snapshots when its
    # driver starts and before its snapshot: hold the stale record's lock
    # meanwhile, so that the record is still there once it runs.
    hold = journal.try_lock(stale)
    try:
        new_image = make_image(instance, 'new')
        child = test_child.run_until(nova_conf, instance, new_image['id'],
                                     'copying')
    finally:
        os.close(hold)
    try:
        new = os.path.join(journal.directory(), new_image['id'] + '.json')
        new_dir = journal.load(new).data['work_dir']
        job = checks.block_jobs(instance.lookup())
        target = mirror_target(instance.lookup())
        assert job and target.startswith(new_dir + os.sep)
        assert not instance.is_persistent()

        result = manage(nova_conf, 'recover')
        out = result.stdout

        assert new_image['id'] + ': in flight' in out, out
        # The new snapshot's job and domain: untouched.
        assert checks.block_jobs(instance.lookup()) != {}
        assert mirror_target(instance.lookup()) == target
        assert not instance.is_persistent()
        assert os.path.isdir(new_dir) and os.path.exists(new)
        assert image_status(glance_client, new_image['id']) != 'deleted'
        # What is the stale snapshot's: cleaned.
        assert not os.path.exists(stale_dir)
        assert image_status(glance_client, stale_image['id']) == 'deleted'
        assert 'left alone: a block job that is not ours runs on vda ' \
               '(mirror into %s)' % target in out, out
        if stale_at == 'undefined':
            assert result.returncode == 1, out
            assert stale_image['id'] + ': incomplete' in out, out
            assert 'still to do: redefine the domain' in out, out
            assert journal.load(stale).recovery['attempts'] == 1
            status = manage(nova_conf, 'status').stdout
            assert 'RUNNING image %s' % new_image['id'] in status, status
            assert 'STOPPED image %s' % stale_image['id'] in status, status
            assert 'recovery attempts: 1' in status, status
            assert 'still to do: redefine the domain' in status, status
        else:
            assert result.returncode == 0, out
            assert stale_image['id'] + ': recovered' in out, out
            assert not os.path.exists(stale)
    finally:
        test_child.kill9(child)

    # Let go: the new snapshot is interrupted too.  One recover undoes
    # both, the newer first: its job, then the domain's definition.
    recover_all(nova_conf, instance, new_image, glance_client, reference,
                snapshots_dir)
