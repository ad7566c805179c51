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

"""The compute driver: nova's libvirt driver with our ``snapshot()``.

Everything but the snapshot is nova's.  A snapshot runs in phases, one
module each, in the order of the file list: ``plan`` (read-only, fails
early), ``capture`` (the only phase that touches the domain), ``extract``
(a flat image), ``upload`` (to Glance, verified); or, with
``capture_method = stream``, ``stream`` (capture and upload in one
pass, no temp image).  Under ``[workarounds]
disable_libvirt_livesnapshot`` a running or paused guest is saved
(``suspend``) while its disk is streamed as a shut-off one is
(``coldstream``).  Temp files live in one
directory per snapshot under ``[libvirt] snapshots_directory`` and are
removed whatever happens.
"""

import os
import shutil
import threading

import libvirt
from nova.compute import task_states
from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import capture
from nova_snapdriver import coldstream
from nova_snapdriver import conf  # noqa: F401  (registers [snapdriver])
from nova_snapdriver import extract
from nova_snapdriver import journal
from nova_snapdriver import novacompat
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import progress
from nova_snapdriver import recovery
from nova_snapdriver import stream
from nova_snapdriver import suspend
from nova_snapdriver import upload

CONF = cfg.CONF
LOG = logging.getLogger(__name__)


class SnapLibvirtDriver(libvirt_driver.LibvirtDriver):
    """LibvirtDriver whose snapshots are bounded, verified and recoverable."""

    def init_host(self, host):
        """Start as nova's driver does, then repair interrupted snapshots.

        nova-compute calls this before it looks at its instances
        (``ComputeManager.init_host`` runs ``_init_instance`` for each one
        afterwards).  Repairing here, once the libvirt connection is up,
        means a domain left transient by a snapshot that died with the
        previous nova-compute is persistent again before nova syncs its
        power state, and the leftover block job is gone before anything
        else touches the disk.  Recovery then runs again every
        ``[snapdriver] recovery_interval`` seconds and before each
        snapshot.
        """
        super(SnapLibvirtDriver, self).init_host(host)
        # The line that tells an operator (and the minicloud's check) that
        # this driver, not nova's, takes this host's snapshots, and how.
        LOG.info('nova-snapdriver takes the snapshots on this host: '
                 'capture_method = %(method)s',
                 {'method': CONF.snapdriver.capture_method})
        self._recover('start-up', always=True)
        self._stop_recovery = threading.Event()
        interval = CONF.snapdriver.recovery_interval
        if interval:
            thread = threading.Thread(
                target=self._recover_periodically, args=(interval,),
                name='snapdriver-recovery', daemon=True)
            thread.start()

    def cleanup_host(self, host):
        stop = getattr(self, '_stop_recovery', None)
        if stop is not None:
            stop.set()
        super(SnapLibvirtDriver, self).cleanup_host(host)

    def _recover_periodically(self, interval):
        while not self._stop_recovery.wait(interval):
            self._recover('periodic', always=True)

    def _recover(self, why, always=False):
        """Repair what interrupted snapshots left; never raises.

        Snapshots in flight (their record locked by a live process,
        this one included) are left alone.  Before a snapshot it runs only
        when the journal has records; at start-up and periodically
        (``always``) also to clean files of no record (saved XML, stray
        journal temp files).
        """
        try:
            if not always and not journal.paths():
                return
            reports = recovery.recover(
                novacompat.host(self).get_connection(),
                novacompat.image_api(self),
                recovery.image_context())
        except Exception:
            LOG.exception('Recovering interrupted snapshots (%s) failed; '
                          'run "nova-snapdriver-manage recover" to retry',
                          why)
            return
        reports = [r for r in reports
                   if r.get('record') and r['state'] != 'in flight']
        if reports:
            LOG.info('Looked at %(n)d interrupted snapshot(s) (%(why)s): '
                     '%(states)s',
                     {'n': len(reports), 'why': why,
                      'states': ', '.join(r['state'] for r in reports)})

    def snapshot(self, context, instance, image_id, update_task_state):
        """Snapshot the root disk of ``instance`` into Glance ``image_id``.

        Disks this driver does not handle (rbd, lvm, ploop, lxc, ...) are
        snapshotted by nova's libvirt driver.
        """
        try:
            guest = novacompat.host(self).get_guest(instance)
        except nova_exception.InstanceNotFound:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)

        try:
            _dev, _path, disk_format = snapshot_plan.root_disk(guest)
            snapshot_plan.nova_takes_it(
                guest.get_power_state(novacompat.host(self)), disk_format)
        except snapshot_plan.NotHandled as e:
            return self._left_to_nova(e, context, instance, image_id,
                                      update_task_state)

        # A record left by an earlier snapshot (a redefine that failed, a
        # job left running, a guest left saved) is repaired before a new
        # one starts.
        self._recover('before a snapshot')
        clock = progress.PhaseClock(instance)
        try:
            with clock.phase('plan'):
                plan = snapshot_plan.build(self, context, instance,
                                           image_id, guest)
        except snapshot_plan.NotHandled as e:
            # The power state changed since: the plan touched nothing.
            return self._left_to_nova(e, context, instance, image_id,
                                      update_task_state)
        metadata = novacompat.snapshot_metadata(
            self,
            instance.image_meta, instance, plan.image_format,
            plan.image_name)
        LOG.info('Beginning %(kind)s snapshot process',
                 {'kind': 'live' if plan.live else 'cold'},
                 instance=instance)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        try:
            self._run(context, instance, guest, plan, metadata,
                      update_task_state, clock)
        except nova_exception.ImageNotFound:
            LOG.warning('Failed to snapshot image because it was deleted',
                        instance=instance)
            raise
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                LOG.info('Instance disappeared while taking a snapshot of '
                         'it: %(error)s', {'error': e}, instance=instance)
                raise nova_exception.InstanceNotFound(
                    instance_id=instance.uuid)
            LOG.exception('Failed to snapshot image', instance=instance)
            raise
        except Exception:
            LOG.exception('Failed to snapshot image', instance=instance)
            raise
        LOG.info('Snapshot image upload complete in %(summary)s',
                 {'summary': clock.summary()}, instance=instance)

    def _left_to_nova(self, why, context, instance, image_id,
                      update_task_state):
        LOG.info('Snapshot of %(what)s is left to nova\'s libvirt driver',
                 {'what': why}, instance=instance)
        return super(SnapLibvirtDriver, self).snapshot(
            context, instance, image_id, update_task_state)

    def _run(self, context, instance, guest, plan, metadata,
             update_task_state, clock):
        # The definition with its secrets, journalled for recovery: only
        # rebase undefines the domain, so only rebase keeps it.
        xml = (capture.saved_xml(guest)
               if plan.live and plan.capture_method == 'rebase' else None)
        was_persistent = bool(plan.live and
                              guest.has_persistent_configuration())
        record = journal.begin(
            instance_uuid=instance.uuid, instance_name=instance.name,
            image_id=plan.image_id, disk_path=plan.disk_path,
            disk_dev=plan.disk_dev, work_dir=plan.work_dir, xml=xml,
            # Only rebase undefines the domain: the others must never
            # redefine it, here or in recovery.
            persistent=bool(plan.capture_method == 'rebase' and
                            was_persistent),
            capture_method=(plan.capture_method
                            if plan.live or plan.cold_stream else None),
            phase='planned')

        def step(name, **fields):
            record.update(phase=name, **fields)
            progress.notify_step(instance, name)

        made_work_dir = False
        try:
            if plan.cold_stream:
                # Nothing staged, not even a directory.
                self._cold_stream(context, instance, guest, plan, metadata,
                                  update_task_state, clock, step)
                return
            # A new name: whatever is already there is not ours (and is
            # left alone).
            os.mkdir(plan.work_dir, 0o700)
            made_work_dir = True
            if plan.live and plan.capture_method == 'stream':
                self._stream(context, instance, guest, plan, metadata,
                             update_task_state, clock, step)
                return
            with clock.phase('capture'):
                if plan.live:
                    captured = capture.live(self, context, instance, guest,
                                            plan, xml, step)
                else:
                    captured = capture.cold(plan)
            step('extracting')
            with clock.phase('extract'):
                if captured.path == plan.image_path:
                    # A backup written as the final image: single copy.
                    size = os.path.getsize(plan.image_path)
                    LOG.info('The backup is the %(fmt)s image (%(size)s): '
                             'no convert pass',
                             {'fmt': plan.image_format,
                              'size': progress.human_size(size)},
                             instance=instance)
                else:
                    size = extract.extract(plan, captured, instance)
                if captured.path not in (plan.disk_path, plan.image_path):
                    # Not needed any more: free its space before the upload.
                    os.unlink(captured.path)
            update_task_state(task_state=task_states.IMAGE_UPLOADING,
                              expected_state=task_states.IMAGE_PENDING_UPLOAD)
            step('uploading', size=size)
            with clock.phase('upload'):
                upload.upload(novacompat.image_api(self), context,
                              plan.image_id,
                              metadata, plan.image_path, size, instance,
                              hashes=plan.hashes)
        finally:
            self._finish(instance, plan, record, was_persistent,
                         made_work_dir)

    def _stream(self, context, instance, guest, plan, metadata,
                update_task_state, clock, step):
        """Capture and upload in one pass (capture_method = stream)."""
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)

        def send(reader, size):
            upload.upload_file(novacompat.image_api(self), context,
                               plan.image_id,
                               metadata, reader, size, instance,
                               take_disk_ops=False, hashes=plan.hashes)
        # nova's disk-ops semaphore ([compute] max_concurrent_disk_ops) is
        # taken before the backup begins, not at the upload: waiting for it
        # with the backup running would grow the scratch file meanwhile.
        with novacompat.disk_ops_semaphore(), clock.phase('stream'):
            stream.stream(self, context, instance, guest, plan, step, send)

    def _cold_stream(self, context, instance, guest, plan, metadata,
                     update_task_state, clock, step):
        """Read a shut-off disk straight into Glance (no temp image).

        Or a saved one (``plan.suspend``): the guest is saved once nova's
        disk-ops slot is ours, not while waiting for it, and started again
        as soon as the stream has read the disk's last byte.
        """
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)

        def send(reader, size):
            upload.upload_file(novacompat.image_api(self), context,
                               plan.image_id, metadata, reader, size,
                               instance, take_disk_ops=False,
                               hashes=plan.hashes)
        with novacompat.disk_ops_semaphore(), clock.phase('stream'):
            if not plan.suspend:
                coldstream.stream_disk(instance, plan, step, send)
                return
            with suspend.suspended(self, context, instance, guest,
                                   plan.power_state, step) as saved:
                coldstream.stream_disk(instance, plan, step, send,
                                       read_done=saved.restore_soon)

    def _finish(self, instance, plan, record, was_persistent,
                made_work_dir):
        """Remove the temp files, then the record: unless a repair is due.

        The work dir is removed only if this snapshot made it.

        For a live snapshot the domain is looked up afresh (the capture's
        connection may have died) and checked: no block job or backup of
        ours may still run, and the domain must be as persistent as it
        was.  The work dir is kept while a job may still write into it.
        The record is kept whenever something is still wrong, or could
        not be checked, for recovery to repair; it is released (no longer
        "in flight") whatever the check met, or recovery would skip it for
        the life of this nova-compute.
        """
        problems, job_may_run = [], False
        try:
            if plan.live:
                problems, job_may_run = capture.leftovers(
                    self, instance, plan, was_persistent)
        except Exception as e:
            # Not one of the failures leftovers() expects: assume the worst.
            LOG.exception('Checking the domain after the snapshot failed',
                          instance=instance)
            problems, job_may_run = ['cannot check the domain: %s' % e], True
        if record.data.get('saved'):
            problems.append('the guest is still saved (managed save): '
                            'recovery starts it again')
        if job_may_run:
            problems.append('%s is kept: a job may still write into it'
                            % plan.work_dir)
        elif made_work_dir:
            shutil.rmtree(plan.work_dir, ignore_errors=True)
            if os.path.exists(plan.work_dir):
                problems.append('could not remove %s' % plan.work_dir)
        if problems:
            LOG.error('Snapshot %(image)s left work to do (%(problems)s); '
                      'its journal record %(record)s is kept for '
                      '"nova-snapdriver-manage recover" or the next start '
                      'of nova-compute',
                      {'image': plan.image_id,
                       'problems': '; '.join(problems),
                       'record': record.path}, instance=instance)
            # Ours no more: recovery must not take it for one in flight.
            record.release()
            return
        record.remove()
