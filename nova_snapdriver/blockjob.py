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

"""Wait for a block copy to become a usable mirror, or find out it failed.

nova's in-tree ``BlockDevice.is_job_complete()`` takes a job that is gone for
a finished one.  A COPY job never finishes on its own: it stays in the
"ready" (mirroring) state until it is aborted or pivoted.  So here a job that
disappears before libvirt reported the mirror ready has failed in QEMU or was
cancelled from outside, and that is an error, never a success.  Readiness is
the ``ready='yes'`` attribute libvirt puts on the disk's ``<mirror>``
element, not merely ``cur == end`` (the cursor can reach the end before QEMU
has switched the job to ready).
"""

import os
import time
from xml.etree import ElementTree

import libvirt
from oslo_log import log as logging

from nova_snapdriver import exception
from nova_snapdriver import progress

LOG = logging.getLogger(__name__)


def _mirror_ready(guest, disk):
    conf = guest.get_disk(disk)
    return bool(conf is not None and conf.mirror is not None and
                conf.mirror.ready == 'yes')


def wait_for_mirror(guest, disk, instance, timeout, poll_interval,
                    log_interval, sleep=time.sleep, clock=time.monotonic):
    """Return once the copy job on ``disk`` is a ready mirror.

    :raises BlockJobFailed: the job ended before it was ready.
    :raises BlockJobTimeout: not ready after ``timeout`` seconds.
    Either way the caller still owns the job: it must abort it.
    """
    dev = guest.get_block_device(disk)
    meter = progress.Progress(instance, 'copy', 0, log_interval)
    deadline = clock() + timeout
    percent = 0
    while True:
        status = dev.get_job_info()
        if status is None:
            raise exception.BlockJobFailed(
                disk=disk, instance_uuid=instance.uuid,
                reason=_vanished_reason(guest))
        if status.end:
            percent = 100 * status.cur // status.end
            meter.update(status.cur, status.end)
        if status.cur == status.end and _mirror_ready(guest, disk):
            LOG.debug('Block copy of %(disk)s is a ready mirror '
                      '(%(size)s)', {'disk': disk,
                                     'size': progress.human_size(status.end)},
                      instance=instance)
            return
        if clock() >= deadline:
            raise exception.BlockJobTimeout(
                disk=disk, instance_uuid=instance.uuid, timeout=timeout,
                percent=percent)
        sleep(poll_interval)


def _vanished_reason(guest):
    try:
        active = guest.is_active()
    except libvirt.libvirtError:
        active = False
    if not active:
        return 'stopped because the instance is no longer running'
    return ('ended before the copy was complete: it failed in QEMU or was '
            'cancelled from outside (see the libvirtd log for the cause)')


def _job_is_gone(error):
    """The domain or its job vanished: there is nothing left to abort."""
    return error.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                      libvirt.VIR_ERR_OPERATION_INVALID)


def abort(guest, disk):
    """Abort the job on ``disk`` if there still is one; True if it was."""
    dev = guest.get_block_device(disk)
    try:
        if dev.get_job_info() is None:
            return False
        dev.abort_job()
    except libvirt.libvirtError as e:
        if _job_is_gone(e):
            return False
        raise
    return True


def _job_stats(domain, flags=0):
    return domain.jobStats(flags)


def backup_running(domain):
    """True while a backup job runs on ``domain``."""
    stats = _job_stats(domain)
    return (stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE) !=
            libvirt.VIR_DOMAIN_JOB_NONE and
            stats.get('operation') == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP)


def wait_for_backup(domain, disk, instance, timeout, poll_interval,
                    log_interval, sleep=time.sleep, clock=time.monotonic):
    """Return once the backup job on ``domain`` completed successfully.

    A backup, unlike a mirror, ends on its own.  It is polled through the
    domain job (``virDomainGetJobStats``); once no job is left, the
    completed job's statistics (``VIR_DOMAIN_JOB_STATS_COMPLETED``) say
    whether it succeeded.  A backup that failed or was aborted is an error.

    :raises BackupFailed: the backup ended without success.
    :raises BackupTimeout: still running after ``timeout`` seconds; the
        caller must abort it.
    """
    meter = progress.Progress(instance, 'backup', 0, log_interval)
    deadline = clock() + timeout
    percent = 0
    while True:
        stats = _job_stats(domain)
        if stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE) == \
                libvirt.VIR_DOMAIN_JOB_NONE:
            break
        total = stats.get('disk_total')
        if total:
            done = stats.get('disk_processed', 0)
            percent = 100 * done // total
            meter.update(done, total)
        if clock() >= deadline:
            raise exception.BackupTimeout(
                disk=disk, instance_uuid=instance.uuid, timeout=timeout,
                percent=percent)
        sleep(poll_interval)
    done = _job_stats(domain, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    if done.get('operation') != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
        raise exception.BackupFailed(
            disk=disk, instance_uuid=instance.uuid,
            reason='ended, and libvirt keeps no record of how')
    if done.get('type') != libvirt.VIR_DOMAIN_JOB_COMPLETED or \
            not done.get('success', True):
        kind = ('was cancelled from outside'
                if done.get('type') == libvirt.VIR_DOMAIN_JOB_CANCELLED
                else 'failed')
        reason = '%s (%s)' % (kind, done.get('errmsg', 'no message'))
        raise exception.BackupFailed(disk=disk, instance_uuid=instance.uuid,
                                     reason=reason)
    if done.get('disk_total'):
        meter.update(done['disk_total'], done['disk_total'])
    LOG.debug('Backup of %(disk)s complete', {'disk': disk},
              instance=instance)


def backup_files(domain, dev):
    """The files the backup job writes on ``dev``: its target or scratch."""
    try:
        xml = domain.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return []
    files = []
    for disk in ElementTree.fromstring(xml).findall('./disks/disk'):
        if disk.get('name') != dev:
            continue
        for kind in ('target', 'scratch'):
            element = disk.find(kind)
            if element is not None and element.get('file'):
                files.append(element.get('file'))
    return files


def backup_writes_into(domain, dev, directory):
    """True if the running backup writes a file of ``dev`` in ``directory``.

    How a snapshot tells its own backup from someone else's (libvirt runs
    one job per domain, and ``abortJob`` aborts whichever runs).
    """
    directory = os.path.normpath(directory)
    return any(os.path.commonpath([os.path.normpath(f), directory]) ==
               directory for f in backup_files(domain, dev))


def abort_backup(domain, timeout=60, sleep=time.sleep,
                 clock=time.monotonic, ours=None, instance=None):
    """Abort a backup still running on ``domain``; True if there was one.

    ``ours(domain)``, if given, must say the backup is the caller's: one
    that is not (a backup someone else began after ours ended) is left
    alone, and False returned.  Waits (bounded) until the job is gone, so
    that QEMU has let go of the target before the caller removes it.
    """
    try:
        if not backup_running(domain):
            return False
        if ours is not None and not ours(domain):
            LOG.warning('A backup job that is not this snapshot\'s runs '
                        'on %s; it is left alone', domain.name(),
                        instance=instance)
            return False
        domain.abortJob()
    except libvirt.libvirtError as e:
        if _job_is_gone(e):
            return False
        raise
    deadline = clock() + timeout
    while clock() < deadline:
        try:
            if not backup_running(domain):
                break
        except libvirt.libvirtError:
            break
        sleep(0.1)
    return True
