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
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import blockjob
from nova_snapdriver import chain
from nova_snapdriver import exception
from nova_snapdriver import qemu_img

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

REDEFINE_ATTEMPTS = 3


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
    guest._domain.blockRebase(plan.disk_dev, plan.overlay_path,
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
    guest._domain.blockCopy(plan.disk_dev,
                            ElementTree.tostring(disk, encoding='unicode'),
                            params, flags)


def backup_xml(guest, plan):
    """Push-mode backup XML: the root disk into ``plan.backup_path``.

    Every other disk of the domain is listed with backup='no'.  The target
    exists already (``create_backup_target``), flat, in
    ``plan.backup_format``.
    """
    root = ElementTree.Element('domainbackup', mode='push')
    disks = ElementTree.SubElement(root, 'disks')
    dom = ElementTree.fromstring(guest.get_xml_desc())
    for target in dom.findall('./devices/disk/target'):
        dev = target.get('dev')
        if dev == plan.disk_dev:
            disk = ElementTree.SubElement(disks, 'disk', name=dev,
                                          backup='yes', type='file')
            ElementTree.SubElement(disk, 'target', file=plan.backup_path)
            ElementTree.SubElement(disk, 'driver', type=plan.backup_format)
        elif dev:
            ElementTree.SubElement(disks, 'disk', name=dev, backup='no')
    return ElementTree.tostring(root, encoding='unicode')


def start_backup(guest, plan):
    guest._domain.backupBegin(
        backup_xml(guest, plan), None,
        libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)


def redefine(driver, xml, instance, xml_path):
    """Make the domain persistent again from its saved XML, or say how to."""
    for attempt in range(1, REDEFINE_ATTEMPTS + 1):
        try:
            driver._host.write_instance_config(xml)
            LOG.debug('Domain redefined', instance=instance)
            return
        except Exception as e:
            LOG.warning('Redefining the domain failed (attempt %(n)d of '
                        '%(max)d): %(error)s',
                        {'n': attempt, 'max': REDEFINE_ATTEMPTS, 'error': e},
                        instance=instance)
            error = e
            if attempt < REDEFINE_ATTEMPTS:
                time.sleep(1)
    try:
        _save_xml(xml, xml_path)
    except OSError as e:
        # Still raise the error that matters; say where the XML is not.
        xml_path = '(nowhere: saving it to %s failed: %s)' % (xml_path, e)
    raise exception.DomainRedefineFailed(
        instance_uuid=instance.uuid, reason=error, xml_path=xml_path)


def _save_xml(xml, path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
    done = False
    try:
        if undefine and guest.has_persistent_configuration():
            driver._delete_guest_configuration(guest, keep_vtpm=True,
                                               keep_nvram=True)
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
        done = True
    finally:
        # Runs whatever happened above, and never raises: an error on the
        # way up stays the one reported; only a clean run reports its own.
        error = _restore(driver, context, instance, guest, plan, xml, state)
        if done and error is not None:
            raise error
    return chain.captured(plan.overlay_path, 'qcow2', plan.chain.backing)


def _live_backup(driver, context, instance, guest, plan, step):
    """Push-mode full backup of the root disk; the domain stays persistent.

    Point in time at backupBegin: with quiesce, the guest is frozen only
    around the begin.  The backup runs to completion on its own; one that
    fails, is aborted from outside or outlives the timeout is an error,
    and one still running when we leave is aborted.
    """
    os.chmod(plan.work_dir, 0o701)  # QEMU (not root) must reach the target
    create_backup_target(plan)
    domain = guest._domain
    running = False
    quiesced = False
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
            domain, plan.disk_dev, instance,
            **_wait_options())
        running = False
    finally:
        if running:
            try:
                if blockjob.abort_backup(domain):
                    LOG.info('Aborted the backup of %(disk)s',
                             {'disk': plan.disk_dev}, instance=instance)
            except Exception:
                LOG.exception('Aborting the backup of %(disk)s failed',
                              {'disk': plan.disk_dev}, instance=instance)
    return chain.captured(plan.backup_path, plan.backup_format)


def _restore(driver, context, instance, guest, plan, xml, state):
    """Undo what ``live`` did to the domain; return the first error met."""
    first = None
    if state['copying']:
        try:
            if blockjob.abort(guest, plan.disk_dev):
                LOG.info('Aborted the block copy of %(disk)s',
                         {'disk': plan.disk_dev}, instance=instance)
        except Exception as e:
            LOG.exception('Aborting the block copy of %(disk)s failed',
                          {'disk': plan.disk_dev}, instance=instance)
            first = first or e
    # The copy is over: give the guest its filesystems back first.
    if state['quiesced']:
        _thaw(driver, context, instance)
    if state['undefined']:
        xml_path = os.path.join(CONF.libvirt.snapshots_directory,
                                '%s.xml' % instance.uuid)
        try:
            redefine(driver, xml, instance, xml_path)
        except Exception as e:
            LOG.error('%s', e, instance=instance)
            first = first or e
    return first


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
