"""Repair what snapshots interrupted by a dead nova-compute left behind.

For each journal record whose process is gone (its lock is free), in order:

1. abort a block job still running on the disk (the mirror outlives the
   process that started it: it belongs to QEMU), or a backup job when the
   record's capture method is backup;
2. redefine the domain from the saved XML if it is no longer persistent
   and the snapshot's method undefined it (only rebase does: the record's
   ``persistent`` is false for copy and backup),
   but never overwrite a persistent definition that differs from the saved
   one: someone changed it since, and theirs wins (reported);
3. delete the temp files;
4. delete the Glance image if it was left ``queued`` or ``saving``, or
   report it when the credentials at hand do not allow the delete;
5. remove the record.

Recovery is idempotent: a record is removed only once all of it is done,
and each step checks the state before it acts, so running it again is
safe, and after a full run there is nothing left to do.  A record that is
truncated or corrupt is reported and skipped, never fatal.
"""

import os
import shutil
from xml.etree import ElementTree

import libvirt
from nova.conf import service_token
from nova import context as nova_context
from nova import exception as nova_exception
from nova import service_auth
from oslo_log import log as logging

from nova_snapdriver import blockjob
from nova_snapdriver import journal

LOG = logging.getLogger(__name__)

LEFTOVER_IMAGE_STATES = ('queued', 'saving', 'importing', 'uploading')


def _canonical(xml):
    """The XML with formatting differences removed, for comparing."""
    return ElementTree.canonicalize(xml, strip_text=True)


def image_context():
    """An admin context that can talk to Glance without a user's request.

    Recovery runs on behalf of no user, so, as nova-manage does, it
    authenticates as nova's service user (``[service_user]`` in
    nova.conf).  Without one, Glance may refuse; the leftover image is then
    reported instead of deleted.
    """
    context = nova_context.get_admin_context()
    try:
        context.user_auth_plugin = service_auth.get_service_auth_plugin(
            service_token.SERVICE_USER_GROUP)
    except Exception as e:
        LOG.warning('No [service_user] credentials to clean up Glance '
                    'images with: %s', e)
    return context


def _lookup(conn, uuid):
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _repair_domain(conn, rec, dry_run, actions, problems):
    data = rec.data
    dom = _lookup(conn, data['instance_uuid'])
    # A backup is a domain job: abortJob is its API.  (libvirt also lists
    # it as a block job of the disk, so it goes first.)
    if (dom is not None and dom.isActive() and
            data.get('capture_method') == 'backup'):
        if blockjob.backup_running(dom):
            actions.append('aborted the backup job of %s'
                           % data.get('instance_name',
                                      data['instance_uuid']))
            if not dry_run:
                blockjob.abort_backup(dom)
    if dom is not None and dom.isActive() and data.get('disk_dev') and \
            not (dry_run and actions):
        try:
            job = dom.blockJobInfo(data['disk_dev'], 0)
        except libvirt.libvirtError:
            job = {}
        if job:
            actions.append('aborted the block job on %s' % data['disk_dev'])
            if not dry_run:
                dom.blockJobAbort(data['disk_dev'], 0)
    if not data.get('persistent') or not data.get('xml'):
        return
    if dom is not None and dom.isPersistent():
        current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                              libvirt.VIR_DOMAIN_XML_SECURE)
        if _canonical(current) != _canonical(data['xml']):
            problems.append('the domain is persistent with a definition '
                            'that changed since the snapshot began; left '
                            'as it is')
        return
    actions.append('redefined the domain %s from its saved XML'
                   % data.get('instance_name', data['instance_uuid']))
    if not dry_run:
        conn.defineXML(data['xml'])


def _remove_temp_files(rec, dry_run, actions):
    work_dir = rec.data['work_dir']
    if os.path.exists(work_dir):
        actions.append('deleted %s' % work_dir)
        if not dry_run:
            shutil.rmtree(work_dir)


def _delete_image(image_api, context, rec, dry_run, actions, problems):
    image_id = rec.image_id
    if image_api is None:
        problems.append('image %s may be left queued: no image service to '
                        'check it with' % image_id)
        return
    try:
        image = image_api.get(context, image_id)
    except nova_exception.ImageNotFound:
        return
    except Exception as e:
        problems.append("could not check image %s (%s); if it is still "
                        "queued, delete it with 'openstack image delete "
                        "%s'" % (image_id, e, image_id))
        return
    if image.get('status') not in LEFTOVER_IMAGE_STATES:
        return
    actions.append('deleted image %s left %s' % (image_id, image['status']))
    if dry_run:
        return
    try:
        image_api.delete(context, image_id)
    except nova_exception.ImageNotFound:
        pass
    except Exception as e:
        actions.pop()
        problems.append("image %s is left %s and could not be deleted "
                        "(%s); delete it with 'openstack image delete %s'"
                        % (image_id, image['status'], e, image_id))


def recover_one(conn, path, image_api=None, context=None, dry_run=False):
    """Repair one record; returns a report dict (see ``recover``)."""
    report = {'record': path, 'actions': [], 'problems': [],
              'image_id': os.path.basename(path)[:-len('.json')]}
    lock_fd = journal.try_lock(path)
    if lock_fd is None:
        report['state'] = 'in flight'
        return report
    try:
        if not os.path.exists(path):
            # Its snapshot finished between listing and locking.
            journal.discard_lock(path)
            report['state'] = 'finished'
            return report
        try:
            rec = journal.load(path)
        except journal.CorruptRecord as e:
            report['state'] = 'corrupt'
            report['problems'].append(str(e))
            LOG.error('Skipping a corrupt snapshot journal record: %s', e)
            return report
        report.update(instance_uuid=rec.data['instance_uuid'],
                      image_id=rec.image_id, phase=rec.phase)
        actions, problems = report['actions'], report['problems']
        _repair_domain(conn, rec, dry_run, actions, problems)
        _remove_temp_files(rec, dry_run, actions)
        _delete_image(image_api, context, rec, dry_run, actions, problems)
        for action in actions:
            LOG.info('Recovery of snapshot %(image)s interrupted in phase '
                     '%(phase)s: %(action)s%(dry)s',
                     {'image': rec.image_id, 'phase': rec.phase,
                      'action': action,
                      'dry': ' (dry run: not done)' if dry_run else ''},
                     instance_uuid=rec.data['instance_uuid'])
        for problem in problems:
            LOG.warning('Recovery of snapshot %(image)s: %(problem)s',
                        {'image': rec.image_id, 'problem': problem},
                        instance_uuid=rec.data['instance_uuid'])
        report['state'] = 'dry run' if dry_run else 'recovered'
        if not dry_run:
            rec.remove()
    except Exception as e:
        LOG.exception('Recovering snapshot journal record %s failed', path)
        report['state'] = 'failed'
        report['problems'].append(str(e))
    finally:
        os.close(lock_fd)
    return report


def recover(conn, image_api=None, context=None, dry_run=False):
    """Repair every record left by a dead process; one report per record.

    Each report is a dict: ``record`` (its path), ``state`` ('recovered',
    'dry run', 'in flight', 'corrupt' or 'failed'), ``actions`` and
    ``problems`` (lists of sentences), and for a readable record
    ``instance_uuid``, ``image_id`` and ``phase``.
    """
    return [recover_one(conn, path, image_api, context, dry_run)
            for path in journal.paths()]
