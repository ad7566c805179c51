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

"""Quiesce for real: libvirt's fsFreeze and fsThaw reach a real guest agent.

The instance has the guest agent channel nova adds for an image with
hw_qemu_guest_agent=yes (made by nova's own code), and the guest runs
Debian's qemu-ga on it, with a small file system to freeze
(tests/testbed/guest.py).  qemu-ga's fsfreeze hook prints "SNAPGUEST
FSFREEZE freeze" on the serial console before each freeze and "...
thaw" after each thaw, so the console says how often the guest was
frozen and thawed, and in what order; the agent itself says whether it
is frozen now (guest-fsfreeze-status).

With the agent, for capture_method stream and rebase and
os_require_quiesce yes and no: the snapshot succeeds and the image
equals the disk; the guest was frozen once and thawed once, really
frozen when the driver came to thaw it, at the point the capture is
taken (stream: its backup job begun; rebase: its mirror aborted, and
never frozen while the mirror ran), and thawed before the image is read;
it is left running, persistent and thawed.  With the channel but
nothing answering on it: a required quiesce fails the snapshot and
leaves the instance as it was; one not required is skipped and the
snapshot succeeds.
"""

import logging
import os
import subprocess
import time

import libvirt
from nova import exception as nova_exception
import pytest

from nova_snapdriver import blockjob
from nova_snapdriver import journal
from tests.testbed import checks
from tests.testbed import guest as test_guest
from tests.testbed import instance as test_instance

METHODS = ['stream', 'rebase']
# The step each method journals once its capture is over: the freeze
# window must be closed by then.
CAPTURED_STEP = {'stream': 'step:streaming', 'rebase': 'step:extracting'}


def image_meta(require_quiesce):
    return {'hw_qemu_guest_agent': 'yes',
            'os_require_quiesce': require_quiesce}


def fsfreeze_events(inst, expected, timeout=10):
    """The guest's freezes and thaws so far, once they are ``expected``.

    The hook's line may reach the console log a little after the agent
    answered, so this waits up to ``timeout`` seconds for the expected
    events, then returns whatever is there.
    """
    deadline = time.monotonic() + timeout
    while True:
        events = test_guest.fsfreeze_events(inst.console_log)
        if events == list(expected) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def watch_steps(inst, listener, method):
    """What the guest said at the steps around the freeze window.

    Returns {phase: (fsfreeze events, the agent's fsfreeze status)}, for
    'step:copying' (rebase's mirror has begun) and the step that follows
    the capture (CAPTURED_STEP).
    """
    seen = {}

    def look(uuid, phase, done, total):
        if uuid != inst.uuid or phase in seen:
            return
        if phase in ('step:copying', CAPTURED_STEP[method]):
            want = [] if phase == 'step:copying' else ['freeze', 'thaw']
            seen[phase] = (fsfreeze_events(inst, want),
                           inst.agent_command('guest-fsfreeze-status'))
    listener(look)
    return seen


def running_job(domain):
    if blockjob.backup_running(domain):
        return 'backup'
    return 'mirror' if checks.block_jobs(domain) else None


def watch_thaw(driver, inst, monkeypatch):
    """The guest and its domain each time the driver comes to thaw it.

    Returns a list of (the agent's fsfreeze status, the job running on
    the domain: 'backup', 'mirror' or None), one per unquiesce call,
    taken before nova's unquiesce runs.
    """
    seen = []
    unquiesce = driver.unquiesce

    def spy(context, instance, image_meta):
        if instance.uuid == inst.uuid:
            seen.append((inst.agent_command('guest-fsfreeze-status'),
                         running_job(inst.lookup())))
        return unquiesce(context, instance, image_meta)
    monkeypatch.setattr(driver, 'unquiesce', spy)
    return seen


def assert_agent_silent(inst):
    """nova's channel is there, and no agent answers on it."""
    assert "name='%s'" % test_guest.AGENT_CHANNEL in inst.lookup().XMLDesc(0)
    with pytest.raises(libvirt.libvirtError) as err:
        inst.agent_command('guest-ping')
    assert err.value.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE


def assert_instance_as_before(inst, snapshots_dir, reference=None):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    dom = inst.lookup()
    assert checks.block_jobs(dom) == {}
    assert dom.jobStats().get('type') == libvirt.VIR_DOMAIN_JOB_NONE
    if reference:
        assert checks.same_content(inst.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert journal.paths() == []


def assert_image_is_the_disk(glance_client, image, inst, workdir):
    assert glance_client.images.get(image['id']).status == 'active'
    local = checks.download(glance_client, image['id'],
                            os.path.join(workdir, image['id'] + '.img'))
    try:
        assert 'backing-filename' not in checks.image_info(local, 'qcow2')
        assert checks.same_content(local, inst.disk_path)
    finally:
        os.unlink(local)


def test_initramfs_runs_qemu_ga_with_its_libraries_and_hook(boot_files,
                                                            tmp_path):
    """qemu-ga loads only libraries from the initramfs; the hook parses."""
    _kernel, initrd = boot_files
    root = tmp_path / 'root'
    root.mkdir()
    with open(initrd, 'rb') as f:
        subprocess.run(['cpio', '--quiet', '-i', '-d',
                        '--no-absolute-filenames'], stdin=f, cwd=root,
                       check=True)
    hook = root / test_guest.FSFREEZE_HOOK.lstrip('/')
    assert hook.read_text() == test_guest.FSFREEZE_HOOK_SCRIPT
    assert os.access(hook, os.X_OK)
    subprocess.run([test_guest.BUSYBOX, 'sh', '-n', str(hook)], check=True)
    for name in test_guest.AGENT_MODULES:
        assert (root / 'lib/modules' / (name + '.ko')).is_file(), name
    loader = [str(root / 'lib64/ld-linux-x86-64.so.2'), '--inhibit-cache',
              '--library-path', str(root / test_guest.LIBDIR)]
    out = subprocess.run(loader + ['--list', str(root / 'usr/sbin/qemu-ga')],
                         stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    for _path, host_path in test_guest.parse_ldd(out):
        assert host_path.startswith(str(root) + '/'), out
    out = subprocess.run(loader + [str(root / 'usr/sbin/qemu-ga'),
                                   '--version'],
                         stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    assert 'QEMU Guest Agent' in out


@pytest.mark.parametrize('require', ['yes', 'no'])
@pytest.mark.parametrize('method', METHODS)
def test_quiesced_snapshot_freezes_once_at_the_capture(
        method, require, driver, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir, listener, monkeypatch):
    conf('snapdriver', capture_method=method)
    inst = make_instance(agent=test_instance.AGENT_QEMU_GA,
                         image_meta=image_meta(require))
    # What the agent will freeze, and that it has not yet.
    assert [fs[0] for fs in inst.lookup().fsInfo()] == [
        test_guest.FREEZABLE_MOUNT]
    assert test_guest.fsfreeze_events(inst.console_log) == []
    steps = watch_steps(inst, listener, method)
    thaws = watch_thaw(driver, inst, monkeypatch)
    image = make_image(inst)

    driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    # stream: frozen around backupBegin; rebase: around the mirror's abort.
    assert thaws == [('frozen', 'backup' if method == 'stream' else None)]
    if method == 'rebase':
        assert steps['step:copying'] == ([], 'thawed')
    assert steps[CAPTURED_STEP[method]] == (['freeze', 'thaw'], 'thawed')
    assert fsfreeze_events(inst, ['freeze', 'thaw']) == ['freeze', 'thaw']
    assert inst.agent_command('guest-fsfreeze-status') == 'thawed'
    assert_image_is_the_disk(glance_client, image, inst, workdir)
    assert_instance_as_before(inst, snapshots_dir)


@pytest.mark.parametrize('method', METHODS)
def test_required_quiesce_without_an_answering_agent_fails(
        method, driver, context, conf, make_instance, make_image,
        glance_client, snapshots_dir, workdir):
    """The channel is there, nothing in the guest listens on it.

    The plan asks the agent (``virDomainGetTime``) before anything is
    touched, and raises nova's InstanceQuiesceFailed: neither stream's
    backup nor rebase's overlay, undefine and mirror ever begin.
    """
    conf('snapdriver', capture_method=method)
    inst = make_instance(agent=test_instance.AGENT_SILENT,
                         image_meta=image_meta('yes'))
    assert_agent_silent(inst)
    reference = checks.reference_copy(inst, workdir)
    image = make_image(inst)

    try:
        with pytest.raises(nova_exception.InstanceQuiesceFailed) as err:
            driver.snapshot(context, inst.obj, image['id'],
                            lambda **kw: None)

        assert 'qemu-guest-agent' in str(err.value)
        assert glance_client.images.get(image['id']).status == 'queued'
        assert test_guest.fsfreeze_events(inst.console_log) == []
        assert_instance_as_before(inst, snapshots_dir, reference)
    finally:
        os.unlink(reference)


def test_quiesce_not_required_without_an_answering_agent_is_skipped(
        driver, context, conf, make_instance, make_image, glance_client,
        snapshots_dir, workdir, caplog):
    conf('snapdriver', capture_method='stream')
    inst = make_instance(agent=test_instance.AGENT_SILENT,
                         image_meta=image_meta('no'))
    assert_agent_silent(inst)
    image = make_image(inst)

    with caplog.at_level(logging.INFO):
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)

    assert 'Skipping quiescing instance' in caplog.text
    assert test_guest.fsfreeze_events(inst.console_log) == []
    assert_image_is_the_disk(glance_client, image, inst, workdir)
    assert_instance_as_before(inst, snapshots_dir)
