"""The compute driver: nova's libvirt driver with our ``snapshot()``.

Everything but the snapshot is nova's.  A snapshot runs in phases, one
module each, in the order of the file list: ``plan`` (read-only, fails
early), ``capture`` (the only phase that touches the domain), ``extract``
(a flat image), ``upload`` (to Glance, verified).  Temp files live in one
directory per snapshot under ``[libvirt] snapshots_directory`` and are
removed whatever happens.
"""

import os
import shutil

import libvirt
from nova.compute import task_states
from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import capture
from nova_snapdriver import conf  # noqa: F401  (registers [snapdriver])
from nova_snapdriver import extract
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import progress
from nova_snapdriver import upload

CONF = cfg.CONF
LOG = logging.getLogger(__name__)


class SnapLibvirtDriver(libvirt_driver.LibvirtDriver):
    """LibvirtDriver whose snapshots are bounded, verified and recoverable."""

    def snapshot(self, context, instance, image_id, update_task_state):
        """Snapshot the root disk of ``instance`` into Glance ``image_id``.

        Disks this driver does not handle (rbd, lvm, ploop, lxc, ...) are
        snapshotted by nova's libvirt driver.
        """
        try:
            guest = self._host.get_guest(instance)
        except nova_exception.InstanceNotFound:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)

        try:
            snapshot_plan.root_disk(guest)
        except snapshot_plan.NotHandled as e:
            LOG.info('Snapshot of %(what)s is left to nova\'s libvirt '
                     'driver', {'what': e}, instance=instance)
            return super(SnapLibvirtDriver, self).snapshot(
                context, instance, image_id, update_task_state)

        clock = progress.PhaseClock(instance)
        with clock.phase('plan'):
            plan = snapshot_plan.build(self, context, instance, image_id,
                                       guest)
        metadata = self._create_snapshot_metadata(
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

    def _run(self, context, instance, guest, plan, metadata,
             update_task_state, clock):
        os.makedirs(plan.work_dir, mode=0o700, exist_ok=True)
        try:
            with clock.phase('capture'):
                if plan.live:
                    captured, fmt = capture.live(self, context, instance,
                                                 guest, plan)
                else:
                    captured, fmt = capture.cold(plan)
            with clock.phase('extract'):
                size = extract.extract(plan, captured, fmt, instance)
                if captured == plan.overlay_path:
                    # Not needed any more: free its space before the upload.
                    os.unlink(plan.overlay_path)
            update_task_state(task_state=task_states.IMAGE_UPLOADING,
                              expected_state=task_states.IMAGE_PENDING_UPLOAD)
            with clock.phase('upload'):
                upload.upload(self._image_api, context, plan.image_id,
                              metadata, plan.image_path, size, instance)
        finally:
            shutil.rmtree(plan.work_dir, ignore_errors=True)
            if os.path.exists(plan.work_dir):
                LOG.error('Could not remove %(dir)s; delete it by hand',
                          {'dir': plan.work_dir}, instance=instance)
