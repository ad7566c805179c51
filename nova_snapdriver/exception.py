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

"""Errors a snapshot can raise, each worded for the operator who reads it.

All are ``NovaException`` subclasses: nova's compute manager records them in
the instance's fault and deletes the half-made image.  The troubleshooting
guide (doc/source/troubleshooting.rst) gives, for each, its usual cause,
what the operator does and the log lines around it; a class added here
belongs there too (tests/unit/test_docs.py checks).
"""

from nova import exception
from nova.i18n import _


class SnapshotError(exception.NovaException):
    """A snapshot by nova-snapdriver failed; the base of every error here.

    See the troubleshooting guide (doc/source/troubleshooting.rst) for what
    each subclass means and what to do about it.
    """

    msg_fmt = _("Snapshot failed: %(reason)s")
    # Every message ends by naming the page that explains it.
    hint = _(" (nova-snapdriver %(name)s: see Troubleshooting in its "
             "documentation)")

    def __init__(self, message=None, **kwargs):
        super(SnapshotError, self).__init__(message, **kwargs)
        self.message = '%s%s' % (self.message, self.hint % {
            'name': type(self).__name__})
        self.args = (self.message,)


class InsufficientSnapshotSpace(SnapshotError):
    msg_fmt = _("Not enough free space in the snapshots directory "
                "%(path)s: the snapshot needs %(needed)d bytes "
                "(%(needed_h)s, including a reserve of %(reserve)d bytes) "
                "but only %(free)d bytes (%(free_h)s) are free. Free some "
                "space there, or point [libvirt] snapshots_directory at a "
                "larger filesystem. The instance was not touched.")


class QemuImgFailed(SnapshotError):
    msg_fmt = _("'%(command)s' failed with exit code %(exit_code)s: "
                "%(stderr)s")


class BlockJobFailed(SnapshotError):
    msg_fmt = _("The block copy of %(disk)s for the snapshot of instance "
                "%(instance_uuid)s %(reason)s. The copy was aborted and the "
                "instance is unchanged; it is safe to retry the snapshot.")


class BlockJobTimeout(BlockJobFailed):
    msg_fmt = _("The block copy of %(disk)s for the snapshot of instance "
                "%(instance_uuid)s was not ready after %(timeout)d s "
                "(%(percent)d%% copied). The copy was aborted and the "
                "instance is unchanged. Raise [snapdriver] "
                "block_job_timeout, or lower [snapdriver] "
                "block_job_bandwidth's limit, and retry.")


class BackupFailed(SnapshotError):
    msg_fmt = _("The backup of %(disk)s for the snapshot of instance "
                "%(instance_uuid)s %(reason)s. The backup was aborted and the "
                "instance is unchanged; it is safe to retry the snapshot.")


class BackupTimeout(BackupFailed):
    msg_fmt = _("The backup of %(disk)s for the snapshot of instance "
                "%(instance_uuid)s was not complete after %(timeout)d s "
                "(%(percent)d%% copied). The backup was aborted and the "
                "instance is unchanged. Raise [snapdriver] "
                "block_job_timeout and retry.")


class DomainRedefineFailed(SnapshotError):
    msg_fmt = _("The persistent definition of instance %(instance_uuid)s "
                "could not be restored after its snapshot: %(reason)s. The "
                "instance still runs, but it is transient: it will vanish "
                "when libvirtd restarts or the domain stops. Its saved "
                "definition is in %(xml_path)s; restore it with 'virsh "
                "define %(xml_path)s' now.")


class UploadVerificationFailed(SnapshotError):
    msg_fmt = _("Glance stored image %(image_id)s with %(algo)s "
                "%(stored)s, but the bytes sent had %(sent)s. The upload "
                "was damaged on the way; the image will be deleted. Check "
                "the Glance store and the network, then retry.")


class UnsafeDiskChain(SnapshotError):
    msg_fmt = _("Refusing to read %(path)s for the snapshot: %(reason)s. "
                "The driver reads only the chain nova builds for an "
                "instance (its disk, and a backing file in nova's image "
                "cache), so nothing was read and the instance was not "
                "touched. Inspect the file as the nova user ('qemu-img "
                "info -U %(path)s'): a qcow2 header rewritten behind "
                "nova's back can mean a compromised guest.")


class LibvirtUnreachable(SnapshotError):
    msg_fmt = _("libvirtd did not answer for %(timeout)d s while the "
                "snapshot of instance %(instance_uuid)s needed it: "
                "%(reason)s. Start libvirtd; the snapshot's journal record "
                "is kept, and the next start of nova-compute, its periodic "
                "recovery or 'nova-snapdriver-manage recover' finishes the "
                "repair.")


class LibvirtConnectionLost(SnapshotError):
    msg_fmt = _("The connection to libvirtd was lost during the %(what)s "
                "of the snapshot of instance %(instance_uuid)s (libvirtd "
                "restarted, or its keepalive timed out): %(reason)s. "
                "%(outcome)s")


class UploadNotRewindable(SnapshotError):
    msg_fmt = _("The upload of image %(image_id)s failed after "
                "%(sent)d bytes (%(sent_h)s) had been read for it, and "
                "[glance] num_retries allows another attempt, but the "
                "snapshot file cannot be read again from its first byte: "
                "%(reason)s. Nothing "
                "more was sent, so Glance stores no partial image; the "
                "image will be deleted. Check that Glance is reachable and "
                "retry the snapshot.")


class ScratchSpaceExhausted(SnapshotError):
    msg_fmt = _("The streaming snapshot's scratch file %(path)s reached "
                "%(used_h)s (%(used)d bytes) with %(free_h)s left free on "
                "its filesystem (cap: %(cap_h)s). The guest's writes since "
                "the snapshot began are copied there, so the backup was "
                "ended before the filesystem filled up and failed the "
                "guest's writes; the instance is unchanged. Bound it with "
                "[snapdriver] stream_scratch_max_mb and reserved_space_mb, "
                "give [libvirt] snapshots_directory more room, or snapshot "
                "when the guest writes less.")


class GuestNotRestored(SnapshotError):
    msg_fmt = _("Instance %(instance_uuid)s was suspended (managed save) "
                "for its snapshot under [workarounds] "
                "disable_libvirt_livesnapshot, and starting it again from "
                "its saved state failed: %(reason)s. Its journal record is "
                "kept: \"nova-snapdriver-manage recover\", the periodic "
                "recovery or the next start of nova-compute restores it; "
                "or start the domain %(name)s with 'virsh start' (libvirt "
                "restores the saved state).")
