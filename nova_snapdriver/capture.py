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

"""Phase 2, capture: the only phase that touches the domain.

The live path is the classic sequence nova's in-tree driver runs, with its
holes closed:

* an overlay backed by the disk's own base receives a shallow block copy;
* the persistent domain is undefined (libvirt refuses a block copy on a
  persistent domain) and redefined from its saved XML in a ``finally`` that
  no earlier failure can skip: not a failed job, not a timeout, not a failed
  abort, not a failed chown (the step in nova's ``_live_snapshot`` that, when
  it fails, leaves the domain transient);
* the job must become a *ready* mirror within a timeout (``blockjob``);
* the guest is frozen only around the abort, so a quiesced snapshot costs
  the guest milliseconds, not the whole copy.

``[snapdriver] capture_method`` (decided in the plan) picks how:

* ``rebase`` (``_live_mirror`` with undefine=True): the sequence above;
* ``copy`` (``_live_mirror`` with undefine=False): ``virDomainBlockCopy``
  with ``TRANSIENT_JOB|SHALLOW|REUSE_EXT`` into the same overlay, the same
  ready wait and abort, and the domain stays persistent throughout;
* ``backup`` (``_live_backup``): ``virDomainBackupBegin`` in push mode, a
  full backup of the disk, point in time at its start, written by QEMU
  straight into the image (or a flat qcow2 to be compressed), no undefine.
  The target is created by us, as the nova-compute user, and handed to
  libvirt with ``REUSE_EXTERNAL``: a target libvirt creates itself is
  root's, mode 0600, and nova could not read it.

Every file QEMU wrote is checked before it is read (``chain.captured``):
QEMU had it open read-write, so its header is not trusted.

The cold path reads nothing but the disk: the domain is shut off.
"""

import os
import time
from xml.etree import ElementTree

import libvirt
from nova import exception as nova_exception
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import blockjob
from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import novacompat
from nova_snapdriver import qemu_img

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

REDEFINE_ATTEMPTS = 3


def lookup_guest(driver, instance, sleep=time.sleep,
                 clock=time.monotonic):
    """The domain, looked up again through nova's ``Host``; None if gone.

    ``Host`` opens a new connection when the old one died (libvirtd was
    restarted, or its keepalive timed out).  While libvirtd does not
    answer, this waits up to ``[snapdriver] libvirt_reconnect_timeout``.
    :raises LibvirtUnreachable: libvirtd still does not answer.
    """
    timeout = CONF.snapdriver.libvirt_reconnect_timeout
    deadline = clock() + timeout
    while True:
        try:
            return novacompat.host(driver).get_guest(instance)
        except nova_exception.InstanceNotFound:
            return None
        except (nova_exception.HypervisorUnavailable,
                nova_exception.InternalError, libvirt.libvirtError) as e:
            if clock() >= deadline:
                raise exception.LibvirtUnreachable(
                    instance_uuid=instance.uuid, timeout=timeout,
                    reason=e) from e
            LOG.warning('libvirtd does not answer (%(error)s); trying '
                        'again', {'error': e}, instance=instance)
            sleep(1)


def connection_lost(guest):
    """True if the connection ``guest`` was looked up on is dead."""
    try:
        return not novacompat.domain(guest).connect().isAlive()
    except libvirt.libvirtError:
        return True


def _wait_options():
    """How long and how often to wait for a block job, from the options."""
    return {'timeout': CONF.snapdriver.block_job_timeout,
            'poll_interval': CONF.snapdriver.block_job_poll_interval,
            'log_interval': CONF.snapdriver.progress_log_interval}


def create_overlay(plan):
    """The empty qcow2 the live copy is written into."""
    if plan.chain.backing:
        qemu_img.create_overlay(plan.overlay_path, plan.chain.backing,
                                plan.virtual_size)
    else:
        qemu_img.create(plan.overlay_path, 'qcow2', plan.virtual_size)


def create_backup_target(plan):
    """The empty, unbacked file QEMU writes the backup into."""
    qemu_img.create(plan.backup_path, plan.backup_format, plan.virtual_size)


def start_copy(guest, plan):
    """blockRebase(COPY|REUSE_EXT|SHALLOW) of the root disk into the overlay.

    Shallow: only the instance's own layer is copied; the overlay shares the
    disk's base, so the copy is as small as what the guest wrote.
    """
    flags = (libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY |
             libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT |
             libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW)
    novacompat.domain(guest).blockRebase(
        plan.disk_dev, plan.overlay_path,
        CONF.snapdriver.block_job_bandwidth, flags)


def start_blockcopy(guest, plan):
    """virDomainBlockCopy(TRANSIENT_JOB|SHALLOW|REUSE_EXT) into the overlay.

    The same shallow mirror as ``start_copy``, but a transient job: libvirt
    allows it on a persistent domain, so nothing is undefined.
    """
    disk = ElementTree.Element('disk', type='file')
    ElementTree.SubElement(disk, 'source', file=plan.overlay_path)
    ElementTree.SubElement(disk, 'driver', type='qcow2')
    params = {}
    bandwidth = CONF.snapdriver.block_job_bandwidth
    if bandwidth:
        params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = \
            bandwidth * 1024 * 1024
    flags = (libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB |
             libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW |
             libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)
    novacompat.domain(guest).blockCopy(
        plan.disk_dev, ElementTree.tostring(disk, encoding='unicode'),
        params, flags)


def backup_xml(guest, plan):
    """Push-mode backup XML: the root disk into ``plan.backup_path``.

    Every other disk of the domain is listed with backup='no'.  The target
    exists already (``create_backup_target``), flat, in
    ``plan.backup_format``.
    """
    root = ElementTree.Element('domainbackup', mode='push')
    disk = backup_disks(root, guest, plan)
    ElementTree.SubElement(disk, 'target', file=plan.backup_path)
    ElementTree.SubElement(disk, 'driver', type=plan.backup_format)
    return ElementTree.tostring(root, encoding='unicode')


def backup_disks(root, guest, plan):
    """``<disks>`` of a backup: the root disk only; its element returned.

    Every other disk of the domain is listed with backup='no'.
    """
    disks = ElementTree.SubElement(root, 'disks')
    dom = ElementTree.fromstring(guest.get_xml_desc())
    found = None
    for target in dom.findall('./devices/disk/target'):
        dev = target.get('dev')
        if dev == plan.disk_dev:
            found = ElementTree.SubElement(disks, 'disk', name=dev,
                                           backup='yes', type='file')
        elif dev:
            ElementTree.SubElement(disks, 'disk', name=dev, backup='no')
    return found


def start_backup(guest, plan):
    novacompat.domain(guest).backupBegin(
        backup_xml(guest, plan), None,
        libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)


def redefine(driver, xml, instance, xml_path, sleep=time.sleep,
             clock=time.monotonic):
    """Make the domain persistent again from its saved XML, or say how to.

    ``REDEFINE_ATTEMPTS`` attempts one second apart, each through nova's
    ``Host`` (which reconnects) and checked on the domain looked up again;
    while libvirtd does not answer at all, more, for up to ``[snapdriver]
    libvirt_reconnect_timeout``.
    """
    deadline = clock() + CONF.snapdriver.libvirt_reconnect_timeout
    attempt = 0
    while True:
        attempt += 1
        unreachable = False
        try:
            novacompat.host(driver).write_instance_config(xml)
            if _persistent_or_gone(driver, instance):
                LOG.debug('Domain redefined', instance=instance)
                return
            error = ('libvirt accepted the definition, yet the domain is '
                     'still transient')
        except (nova_exception.HypervisorUnavailable,
                exception.LibvirtUnreachable) as e:
            error, unreachable = '%s: %s' % (type(e).__name__, e), True
        except Exception as e:
            error = '%s: %s' % (type(e).__name__, e)
        LOG.warning('Redefining the domain failed (attempt %(n)d): '
                    '%(error)s', {'n': attempt, 'error': error},
                    instance=instance)
        if attempt >= REDEFINE_ATTEMPTS and not (
                unreachable and clock() < deadline):
            break
        sleep(1)
    try:
        _save_xml(xml, xml_path)
    except OSError as e:
        # Still raise the error that matters; say where the XML is not.
        xml_path = '(nowhere: saving it to %s failed: %s)' % (xml_path, e)
    raise exception.DomainRedefineFailed(
        instance_uuid=instance.uuid, reason=error, xml_path=xml_path)


def _persistent_or_gone(driver, instance):
    """Checked on a fresh lookup: True unless the domain is transient."""
    guest = lookup_guest(driver, instance)
    try:
        return guest is None or guest.has_persistent_configuration()
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True
        raise


def _save_xml(xml, path):
    # O_NOFOLLOW: a symbolic link planted at the path is not followed
    # (the XML holds the domain's secrets).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                 0o600)
    os.fchmod(fd, 0o600)  # the mode above only applies to a new file
    with os.fdopen(fd, 'w') as f:
        f.write(xml)


def saved_xml(guest):
    """The persistent definition, secrets included, to redefine it from."""
    return guest.get_xml_desc(dump_inactive=True, dump_sensitive=True)


def live(driver, context, instance, guest, plan, xml, step):
    """Capture the running disk; the domain ends as it began.

    ``xml`` is the domain's saved definition (``saved_xml``); ``step(name)``
    is called after each change to the domain, for the journal.  Returns
    the captured file's checked chain (a ``chain.Node``).
    """
    method = plan.capture_method
    if method == 'backup':
        return _live_backup(driver, context, instance, guest, plan, step)
    return _live_mirror(driver, context, instance, guest, plan, xml, step,
                        undefine=(method == 'rebase'))


def _live_mirror(driver, context, instance, guest, plan, xml, step,
                 undefine):
    """rebase (undefine=True) or copy: mirror into the overlay, abort."""
    os.chmod(plan.work_dir, 0o701)  # QEMU (not root) must reach the overlay
    create_overlay(plan)
    step('overlay')
    state = {'undefined': False, 'copying': False, 'quiesced': False}
    error = None
    try:
        if undefine and guest.has_persistent_configuration():
            novacompat.undefine(driver, guest)
            state['undefined'] = True
            LOG.debug('Domain undefined for the block copy',
                      instance=instance)
            step('undefined')
        if undefine:
            start_copy(guest, plan)
        else:
            start_blockcopy(guest, plan)
        state['copying'] = True
        step('copying')
        blockjob.wait_for_mirror(
            guest, plan.disk_dev, instance,
            **_wait_options())
        if plan.quiesce:
            state['quiesced'] = _freeze(driver, context, instance, plan)
        # A synchronous abort of a ready mirror leaves the overlay holding
        # the disk as it was at this instant, and the guest on its own disk.
        guest.get_block_device(plan.disk_dev).abort_job()
        state['copying'] = False
    except BaseException as e:
        error = e
        raise
    finally:
        # Runs whatever happened above.  The error raised is the one that
        # matters most: a domain left transient, then the first failure.
        abort_error, redefine_error = _restore(
            driver, context, instance, guest, plan, xml, state)
        _raise_what_matters(instance, guest, 'block copy', error,
                            abort_error, redefine_error)
    return chain.captured(plan.overlay_path, 'qcow2', plan.chain.backing)


def _raise_what_matters(instance, guest, what, error, cleanup_error,
                        redefine_error=None):
    """Raise the error an operator must see first, the others chained.

    A domain that could not be redefined comes first (it is transient and
    will vanish), then a lost libvirt connection (say so, not merely
    "libvirtError"), then whatever failed first.
    """
    cause = error or cleanup_error
    if redefine_error is not None:
        raise redefine_error from cause
    if isinstance(error, libvirt.libvirtError) and connection_lost(guest):
        if cleanup_error is None:
            outcome = ('The driver looked the domain up again on a new '
                       'connection and ended the job there; the instance '
                       'is as it was. Retry the snapshot.')
        else:
            outcome = ('The driver could not end the job on a new '
                       'connection either (%s). The snapshot\'s journal '
                       'record and temp files are kept: once libvirtd '
                       'answers, recovery (periodic, at the next start of '
                       'nova-compute, or "nova-snapdriver-manage recover") '
                       'ends the job; then retry the snapshot.'
                       % cleanup_error)
        raise exception.LibvirtConnectionLost(
            instance_uuid=instance.uuid, what=what, reason=error,
            outcome=outcome) from error
    if error is None and cleanup_error is not None:
        raise cleanup_error


def _live_backup(driver, context, instance, guest, plan, step):
    """Push-mode full backup of the root disk; the domain stays persistent.

    Point in time at backupBegin: with quiesce, the guest is frozen only
    around the begin.  The backup runs to completion on its own; one that
    fails, is aborted from outside or outlives the timeout is an error,
    and one still running when we leave is aborted.
    """
    os.chmod(plan.work_dir, 0o701)  # QEMU (not root) must reach the target
    create_backup_target(plan)
    running = False
    quiesced = False
    error = abort_error = None
    try:
        if plan.quiesce:
            quiesced = _freeze(driver, context, instance, plan)
        try:
            start_backup(guest, plan)
            running = True
        finally:
            if quiesced:
                _thaw(driver, context, instance)
        step('backup')
        blockjob.wait_for_backup(
            novacompat.domain(guest), plan.disk_dev, instance,
            **_wait_options())
        running = False
    except BaseException as e:
        error = e
        raise
    finally:
        if running:
            try:
                _abort_backup(driver, instance, guest, plan)
            except Exception as e:
                LOG.exception('Aborting the backup of %(disk)s failed',
                              {'disk': plan.disk_dev}, instance=instance)
                abort_error = e
        _raise_what_matters(instance, guest, 'backup', error, abort_error)
    return chain.captured(plan.backup_path, plan.backup_format)


def _on_fresh_guest(driver, instance, guest, action, what):
    """``action(guest)``; after a libvirt error, again on a fresh lookup.

    The first try uses the capture's own domain handle.  If libvirt fails
    (its connection may be dead: libvirtd restarted, or its keepalive
    timed out), the domain is looked up again through nova's Host, which
    reconnects, and ``action`` runs there.  A domain that is gone has no
    job left.  Returns what ``action`` returned (False if gone).
    """
    try:
        return action(guest)
    except libvirt.libvirtError as e:
        LOG.warning('%(what)s failed (%(error)s); looking the domain up '
                    'again through a new libvirt connection',
                    {'what': what, 'error': e}, instance=instance)
    fresh = lookup_guest(driver, instance)
    if fresh is None:
        LOG.info('The domain is gone: no job is left on it',
                 instance=instance)
        return False
    return action(fresh)


def _abort_mirror(driver, instance, guest, plan):
    aborted = _on_fresh_guest(
        driver, instance, guest,
        lambda g: blockjob.abort(g, plan.disk_dev),
        'Aborting the block copy of %s' % plan.disk_dev)
    if aborted:
        LOG.info('Aborted the block copy of %(disk)s',
                 {'disk': plan.disk_dev}, instance=instance)


def _abort_backup(driver, instance, guest, plan):
    aborted = _on_fresh_guest(
        driver, instance, guest,
        lambda g: blockjob.abort_backup(novacompat.domain(g)),
        'Aborting the backup of %s' % plan.disk_dev)
    if aborted:
        LOG.info('Aborted the backup of %(disk)s',
                 {'disk': plan.disk_dev}, instance=instance)


def _restore(driver, context, instance, guest, plan, xml, state):
    """Undo what ``live`` did to the domain.

    Returns (the abort's error, the redefine's error), None where all went
    well; never raises.
    """
    abort_error = redefine_error = None
    if state['copying']:
        try:
            _abort_mirror(driver, instance, guest, plan)
            state['copying'] = False
        except Exception as e:
            LOG.exception('Aborting the block copy of %(disk)s failed',
                          {'disk': plan.disk_dev}, instance=instance)
            abort_error = e
    # The copy is over: give the guest its filesystems back first.
    if state['quiesced']:
        _thaw(driver, context, instance)
    if state['undefined']:
        xml_path = os.path.join(CONF.libvirt.snapshots_directory,
                                '%s.xml' % instance.uuid)
        try:
            redefine(driver, xml, instance, xml_path)
            state['undefined'] = False
        except Exception as e:
            LOG.error('%s', e, instance=instance)
            redefine_error = e
    return abort_error, redefine_error


def leftovers(driver, instance, plan, was_persistent):
    """What is still wrong with the domain after a live capture.

    Looked up afresh (the capture's connection may be dead).  Returns
    (problems, job_may_run): sentences, and whether a block job or backup
    may still write into the work dir (then it must not be deleted).
    """
    try:
        guest = lookup_guest(driver, instance)
    except exception.LibvirtUnreachable as e:
        return ['cannot check the domain: %s' % e], True
    if guest is None:
        return [], False
    problems = []
    try:
        if guest.get_block_device(plan.disk_dev).get_job_info() is not None:
            problems.append('a block job still runs on %s' % plan.disk_dev)
        if blockjob.backup_running(novacompat.domain(guest)):
            problems.append('a backup job still runs')
        job_may_run = bool(problems)
        if was_persistent and not guest.has_persistent_configuration():
            problems.append('the domain is still transient')
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return [], False
        return ['cannot check the domain: %s' % e], True
    return problems, job_may_run


def _freeze(driver, context, instance, plan):
    try:
        driver.quiesce(context, instance, instance.image_meta)
        return True
    except Exception as e:
        if plan.require_quiesce:
            raise
        LOG.info('Skipping quiescing instance: %(reason)s.',
                 {'reason': e}, instance=instance)
        return False


def _thaw(driver, context, instance):
    try:
        driver.unquiesce(context, instance, instance.image_meta)
    except Exception:
        LOG.exception('Thawing the guest filesystems failed; run '
                      '"virsh domfsthaw %s" if the guest is frozen',
                      instance.name, instance=instance)


def cold(plan):
    """A shut-off domain's disk is read as it is: nothing to capture."""
    return plan.chain
