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

"""Phase 1, plan: every fact a snapshot needs, gathered read-only.

Nothing here changes the domain, the disk or Glance.  Whatever can make the
snapshot fail for a reason known in advance (the image is gone, the disk is
of a kind we don't handle, the snapshots directory is too small, the image
demands a quiesce the guest cannot do) fails here, before anything is
touched.
"""

import dataclasses
import os
import re
import secrets
import shutil
from xml.etree import ElementTree

import libvirt

from nova.compute import power_state
from nova import exception as nova_exception
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import chain as disk_chain
from nova_snapdriver import exception
from nova_snapdriver import novacompat
from nova_snapdriver import progress
from nova_snapdriver import qemu_identity
from nova_snapdriver import qemu_img
from nova_snapdriver import upload

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

# On-disk formats of file-backed root disks this driver snapshots itself.
# Everything else (rbd, lvm, ploop, lxc, parallels) is the parent's job.
HANDLED_FORMATS = ('raw', 'qcow2')
# Image formats a stream lays out, QEMU's push backup writes as the image
# itself, and qemu-img measure knows.  Others ([libvirt]
# snapshot_image_format = vmdk or vdi) are written by qemu-img convert.
NATIVE_FORMATS = ('raw', 'qcow2')

# Power states in which the disk is captured through a live block copy.
# nova takes live snapshots of every domain that is not shut down; a paused
# domain's block jobs run although its vCPUs don't.
LIVE_STATES = tuple(set(power_state.STATE_MAP) - {power_state.SHUTDOWN})
# Power states in which nova suspends the guest (managed save) for a cold
# snapshot under [workarounds] disable_libvirt_livesnapshot
# (LibvirtDriver._needs_suspend_resume_for_snapshot).
SUSPEND_STATES = (power_state.RUNNING, power_state.PAUSED)

QEMU_NBD = 'qemu-nbd'
OVERLAY_NAME = 'overlay.qcow2'
BACKUP_NAME = 'backup.qcow2'
IMAGE_NAME = 'image'

# [snapdriver] capture_method values that name a method ('auto' does not).
CAPTURE_METHODS = ('rebase', 'copy', 'backup', 'stream')


class NotHandled(Exception):
    """This disk is not ours to snapshot; the parent driver takes it."""


@dataclasses.dataclass(frozen=True)
class SnapshotPlan(object):
    image_id: str
    image_name: str
    live: bool
    power_state: int
    disk_dev: str
    disk_path: str
    disk_format: str
    # The disk's checked chain (chain.Node): what qemu-img reads.
    chain: disk_chain.Node
    virtual_size: int
    image_format: str
    compress: bool
    quiesce: bool
    require_quiesce: bool
    work_dir: str
    space_needed: int
    # Live only: 'rebase', 'copy', 'backup' or 'stream' (see [snapdriver]
    # capture_method); the cold path captures nothing.
    capture_method: str = 'rebase'
    compression_type: str = 'zlib'
    # What the upload hashes: the algorithm Glance will report
    # (upload.hashes_for), or sha512 and md5 where it is not known;
    # nothing with [snapdriver] verify_upload_hash = False.
    hashes: tuple = upload.BOTH
    # [workarounds] disable_libvirt_livesnapshot: the running or paused
    # guest is saved (managed save) while its disk is streamed cold.
    suspend: bool = False

    @property
    def backing_file(self):
        return self.chain.backing.path if self.chain.backing else None

    @property
    def backing_format(self):
        return self.chain.backing.format if self.chain.backing else None

    @property
    def overlay_path(self):
        return os.path.join(self.work_dir, OVERLAY_NAME)

    @property
    def cold_stream(self):
        """A shut-off disk read over NBD straight into Glance."""
        return not self.live and self.capture_method == 'stream'

    @property
    def single_copy(self):
        """The backup is written as the final image: no convert pass."""
        return (self.live and self.capture_method == 'backup' and
                not self.compress and self.image_format in NATIVE_FORMATS)

    @property
    def backup_path(self):
        """Where a backup is written: the image itself when it can be."""
        if self.single_copy:
            return self.image_path
        return os.path.join(self.work_dir, BACKUP_NAME)

    @property
    def backup_format(self):
        return self.image_format if self.single_copy else 'qcow2'

    @property
    def image_path(self):
        return os.path.join(self.work_dir, IMAGE_NAME)


def output_format(source_format):
    """The image format, chosen the way nova's in-tree driver chooses it."""
    fmt = CONF.libvirt.snapshot_image_format or source_format
    if fmt in ('lvm', 'rbd'):
        fmt = 'raw'
    return fmt


def root_disk(guest):
    """(target dev, path, format) of the root disk, or NotHandled."""
    if CONF.libvirt.virt_type in ('lxc', 'parallels'):
        raise NotHandled('virt_type %s' % CONF.libvirt.virt_type)
    disk_path, disk_format = novacompat.find_disk(guest)
    source_type = novacompat.disk_type_from_path(disk_path)
    if source_type is not None or disk_format not in HANDLED_FORMATS:
        raise NotHandled('%s disk %s' % (source_type or disk_format,
                                         disk_path))
    conf = guest.get_disk(disk_path)
    if conf is None or conf.source_type != 'file':
        raise NotHandled('non-file disk %s' % disk_path)
    return conf.target_dev, disk_path, disk_format


def compressed(image_format):
    """Whether the image is written compressed, as nova decides it."""
    return bool(CONF.libvirt.snapshot_compression and
                image_format == 'qcow2')


def nova_takes_it(state, disk_format='qcow2'):
    """NotHandled if nova's options leave this snapshot to nova's driver.

    ``[workarounds] disable_libvirt_livesnapshot``: operators set it when
    live snapshots crash guests on their QEMU; nova then suspends a
    running or paused guest (managed save), converts its disk into a temp
    image, resumes the guest, and uploads.  We take such a guest only
    where asked to stream its disk (``suspend_unavailable``): saved, read
    straight into Glance, restored once the last byte is read
    (``suspend``).  ``[ephemeral_storage_encryption] enabled``: nova's
    own path for encrypted disks.  What we leave is nova's exactly as
    nova does it.
    """
    if CONF.ephemeral_storage_encryption.enabled:
        raise NotHandled('[ephemeral_storage_encryption] enabled')
    if CONF.workarounds.disable_libvirt_livesnapshot and state in LIVE_STATES:
        why = suspend_unavailable(state, disk_format)
        if why:
            raise NotHandled('[workarounds] disable_libvirt_livesnapshot '
                             '(%s: nova suspends the guest for a cold '
                             'snapshot)' % why)


def suspend_unavailable(state, disk_format):
    """Why nova's driver, not ours, suspends this guest; None if we do.

    Ours streams the saved guest's disk as a shut-off one is streamed
    (``cold_stream_unavailable``), so it needs ``capture_method`` stream,
    an uncompressed raw or qcow2 image, qemu-nbd and libnbd.  And a
    running or paused guest: nova takes other states (crashed, say) cold
    as they are, without a suspend.

    ``auto`` leaves it to nova: ours keeps the guest saved while Glance
    takes the image, nova's only while it converts the disk on the host,
    which is the shorter outage wherever the upload is slower than the
    convert (doc/source/capture-methods.rst has the measurement).
    ``stream`` is for hosts that would rather not stage the image.
    """
    method = CONF.snapdriver.capture_method
    if method == 'auto':
        return ('capture_method auto keeps nova\'s shorter outage; '
                'stream would keep the guest saved for the upload')
    if method != 'stream':
        return 'capture_method %s does not stream' % method
    if state not in SUSPEND_STATES:
        return 'power state %s' % power_state.STATE_MAP.get(state, state)
    image_format = output_format(disk_format)
    return cold_stream_unavailable(image_format, compressed(image_format))


def quiesce_wanted(driver, instance, image_meta, guest=None):
    """(try to quiesce, quiesce required); fails now if required but futile.

    nova's in-tree driver finds out that a required quiesce is impossible
    only after it created its overlay; here it is refused up front: nova's
    own checks (``_can_quiesce``: virt type, ``hw_qemu_guest_agent``),
    and, for a required quiesce, that the guest's agent answers at all
    (``virDomainGetTime`` goes through it), before anything is touched.
    """
    required = bool(novacompat.requires_quiesce(driver, image_meta))
    try:
        novacompat.can_quiesce(driver, instance, image_meta)
        if required and guest is not None:
            _agent_answers(instance, guest)
    except nova_exception.NovaException as e:
        if required:
            LOG.error('Image property os_require_quiesce is set but the '
                      'instance cannot be quiesced: %(reason)s',
                      {'reason': e}, instance=instance)
            raise
        return False, False
    return True, required


def _agent_answers(instance, guest):
    """InstanceQuiesceFailed unless the guest's agent answers."""
    try:
        novacompat.domain(guest).getTime()
    except libvirt.libvirtError as e:
        raise nova_exception.InstanceQuiesceFailed(
            reason='the QEMU guest agent (qemu-guest-agent) in the guest '
            'does not answer (%s); start it there, or snapshot an image '
            'without os_require_quiesce. Nothing was touched' % e) from e


def image_size(node, image_format, virtual_size=0):
    """Bytes an image of the whole chain takes on disk, as qemu-img writes it.

    ``qemu-img measure``'s ``required``; but ``-O raw`` reports the virtual
    size, while ``qemu-img convert`` writes a sparse raw file that holds
    only the chain's data: for raw, the chain's allocated data is what
    counts, and ``-O qcow2`` measures exactly that (plus a little
    metadata).  qemu-img cannot measure other formats (vmdk, vdi): for
    them the estimate is the ``virtual_size`` and a margin for metadata,
    more than either can take.
    """
    if image_format not in NATIVE_FORMATS:
        return virtual_size + virtual_size // 64 + 16 * 1024 * 1024
    return qemu_img.measure(node, 'qcow2' if image_format == 'raw'
                            else image_format)


def space_needed(live, node, disk_info, image_format, method='rebase',
                 compress=False):
    """Bytes the snapshot stages in the snapshots directory at its peak.

    The image itself (``image_size``), plus for a live snapshot by mirror
    (rebase, copy) the overlay: a shallow copy holds what the instance's
    own layer holds, which its allocated size bounds.  A backup is a full,
    flat qcow2: the image itself when uncompressed, else a second full
    copy beside the compressed image.  A backup written straight into a
    raw image is the exception: QEMU writes every block of it, zeros
    included, so it takes the virtual size.  A stream stages no image,
    only its scratch file: at worst every allocated cluster of the chain,
    copied before the guest overwrites it.
    """
    if not live and method == 'stream':
        return 0  # read straight from the disk into Glance
    if live and method == 'stream':
        cap = CONF.snapdriver.stream_scratch_max_mb * 1024 * 1024
        allocated = image_size(node, 'qcow2')
        return min(cap, allocated) if cap else allocated
    virtual_size = int(disk_info.get('virtual-size', 0))
    single_copy = image_format in NATIVE_FORMATS and not compress
    if live and method == 'backup' and single_copy:
        if image_format == 'raw':
            return virtual_size
        return image_size(node, image_format)
    needed = image_size(node, image_format, virtual_size)
    if live and method == 'backup':
        needed += image_size(node, 'qcow2')
    elif live:
        needed += int(disk_info.get('actual-size', 0))
    return needed


def backup_supported(conn, guest):
    """True if this libvirt and QEMU can run a push-mode backup."""
    if not hasattr(libvirt.virDomain, 'backupBegin'):
        return False
    try:
        root = ElementTree.fromstring(guest.get_xml_desc())
        os_type = root.find('./os/type')
        arch = os_type.get('arch') if os_type is not None else None
        caps = conn.getDomainCapabilities(None, arch, None,
                                          root.get('type'), 0)
    except Exception as e:
        LOG.debug('Cannot read the domain capabilities: %s', e)
        return False
    backup = ElementTree.fromstring(caps).find('./features/backup')
    return backup is not None and backup.get('supported') == 'yes'


def libnbd_available():
    """True if libnbd's Python binding imports (``tools/host/link-libnbd``)."""
    try:
        import nbd  # noqa: F401
    except ImportError:
        return False
    return True


def stream_unavailable(driver, guest, image_format='qcow2',
                       backup_known=False, work_dir=None):
    """Why this host cannot stream ``guest``'s disk now, or None if it can.

    A stream lays out raw or qcow2 images only, and needs a pull-mode
    backup (``backup_supported``), libnbd's binding, and a nova-compute
    user that can share the export's socket with the user QEMU runs as
    (``qemu_identity``).  ``backup_known``: the caller has checked the
    backup already.  Native threads or eventlet: either (``stream``).
    """
    if image_format not in NATIVE_FORMATS:
        return ('a stream writes raw or qcow2 images, not %s '
                '([libvirt] snapshot_image_format)' % image_format)
    too_long = work_dir and qemu_identity.socket_path_too_long(work_dir)
    if too_long:
        return too_long
    if not (backup_known or
            backup_supported(novacompat.host(driver).get_connection(),
                             guest)):
        return 'libvirt or QEMU cannot run a backup job on this domain'
    if not libnbd_available():
        return ('libnbd\'s Python binding does not import (install '
                'python3-libnbd)')
    return qemu_identity.unreachable(qemu_identity.of_guest(guest))


def cold_stream_unavailable(image_format, compress):
    """Why a shut-off disk cannot be streamed, or None if it can.

    It needs what a live stream needs but libvirt's backup and QEMU's
    socket: qemu-nbd (Debian's qemu-utils), libnbd's binding, and an
    uncompressed raw or qcow2 image.
    """
    if image_format not in NATIVE_FORMATS:
        return 'a stream writes raw or qcow2 images, not %s' % image_format
    if compress:
        return 'a stream writes no compressed image'
    if not shutil.which(QEMU_NBD):
        return '%s is not installed (Debian\'s qemu-utils)' % QEMU_NBD
    if not libnbd_available():
        return ('libnbd\'s Python binding does not import (install '
                'python3-libnbd)')
    return None


def cold_method(compress, image_format, instance=None):
    """'stream' for a shut-off disk if asked for (stream, auto) and able.

    Else 'rebase', which for a cold snapshot means nova's way: qemu-img
    convert into a temp image, then the upload.
    """
    if CONF.snapdriver.capture_method not in ('stream', 'auto'):
        return 'rebase'
    why = cold_stream_unavailable(image_format, compress)
    if why is None:
        return 'stream'
    LOG.info('The shut-off disk is not streamed (%(why)s): converted '
             'first, as nova does', {'why': why}, instance=instance)
    return 'rebase'


def capture_method(driver, guest, compress=False, instance=None,
                   image_format='qcow2', work_dir=None):
    """The live capture method: [snapdriver] capture_method, auto resolved.

    auto: stream if the host can (``stream_unavailable``: a pull-mode
    backup, libnbd, QEMU's socket within reach); backup if
    only a backup job is possible; else copy if libvirt knows
    VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB, else rebase.  But a compressed
    image (``compress``) prefers copy to backup: a backup is then a second
    full copy of the disk, written uncompressed beside the image and
    converted once more, so it takes longer and about three times the
    image's size in temporary space, whereas copy stages only the
    instance's own layer and compresses in the one convert it needs
    anyway.  The domain stays persistent with either.  A stream cannot
    compress: asked for with compression, copy (else rebase) is used.  An
    explicit stream that this host cannot run (``stream_unavailable``)
    runs as auto would pick, with a warning that says why: it is checked
    here, before anything is touched.
    """
    method = CONF.snapdriver.capture_method
    transient_copy = hasattr(libvirt, 'VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB')
    mirror = 'copy' if transient_copy else 'rebase'
    if method == 'stream' and compress:
        # A stream is never compressed: honour snapshot_compression.
        LOG.warning('capture_method stream writes no compressed image; '
                    'using %s for this compressed snapshot', mirror,
                    instance=instance)
        return mirror
    if method == 'stream':
        why = stream_unavailable(driver, guest, image_format,
                                 work_dir=work_dir)
        if why is None:
            return method
        # What auto picks here: never a stream.
        instead = _best_supported(driver, guest, compress, mirror,
                                  instance, quiet=True,
                                  image_format=image_format,
                                  work_dir=work_dir)
        LOG.warning('capture_method stream cannot run on this host: '
                    '%(why)s; using %(instead)s for this snapshot',
                    {'why': why, 'instead': instead}, instance=instance)
        return instead
    if method != 'auto':
        return method
    return _best_supported(driver, guest, compress, mirror, instance,
                           image_format=image_format, work_dir=work_dir)


def _best_supported(driver, guest, compress, mirror, instance=None,
                    quiet=False, image_format='qcow2', work_dir=None):
    """auto's choice (see capture_method); ``mirror``: copy, else rebase."""
    if compress and mirror == 'copy':
        return 'copy'
    if not backup_supported(novacompat.host(driver).get_connection(),
                            guest):
        return mirror
    if compress:
        return 'backup'  # a stream is never compressed
    why = stream_unavailable(driver, guest, image_format, backup_known=True,
                             work_dir=work_dir)
    if why is None:
        return 'stream'
    if not quiet:
        LOG.warning('capture_method auto does not stream on this host: '
                    '%(why)s; using backup', {'why': why},
                    instance=instance)
    return 'backup'


def check_space(directory, needed):
    reserve = CONF.snapdriver.reserved_space_mb * 1024 * 1024
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed + reserve > free:
        raise exception.InsufficientSnapshotSpace(
            path=directory, needed=needed + reserve,
            needed_h=progress.human_size(needed + reserve),
            reserve=reserve, free=free, free_h=progress.human_size(free))
    return free


# What work_dir_name makes (nova's own work dirs are tmp*): for purge.
WORK_DIR_PATTERN = re.compile(r'^[0-9a-f]{8}\.[0-9a-f]{12}$')


def work_dir_name(snapshots_dir, image_id):
    """Where one snapshot's temp files go: a name nobody can guess.

    ``<first 8 of the image id>.<12 random hex digits>``: an operator
    tells whose it is, nobody else can plant something there first (nova
    in-tree uses ``mkdtemp``), and the NBD socket's path under it stays
    short (``qemu_identity.socket_path_too_long``).  The driver creates
    it, 0700, and fails if anything is there already.
    """
    name = '%s.%s' % (image_id[:8], secrets.token_hex(6))
    return os.path.join(snapshots_dir, name)


def build(driver, context, instance, image_id, guest):
    """Gather the facts of one snapshot; raises before touching anything."""
    disk_dev, disk_path, disk_format = root_disk(guest)
    # The image may have been deleted between the API call and now.
    image = novacompat.image_api(driver).get(context, image_id)
    state = guest.get_power_state(novacompat.host(driver))
    # Asked again: the state may have changed since the driver asked.
    nova_takes_it(state, disk_format)
    suspend = bool(CONF.workarounds.disable_libvirt_livesnapshot and
                   state in SUSPEND_STATES)
    live = state in LIVE_STATES and not suspend
    image_format = output_format(disk_format)
    # Checked before any qemu-img reads it: raises UnsafeDiskChain.
    node = disk_chain.disk_chain(disk_path, disk_format)
    disk_info = qemu_img.info(node)
    quiesce, require_quiesce = (
        quiesce_wanted(driver, instance, instance.image_meta, guest)
        if live else (False, False))

    compress = compressed(image_format)
    snapshots_dir = CONF.libvirt.snapshots_directory
    work_dir = work_dir_name(snapshots_dir, image_id)
    if live:
        method = capture_method(driver, guest, compress, instance,
                                image_format, work_dir)
    elif suspend:
        method = 'stream'  # nova_takes_it checked that it can
    else:
        method = cold_method(compress, image_format, instance)

    os.makedirs(snapshots_dir, exist_ok=True)
    needed = space_needed(live, node, disk_info, image_format, method,
                          compress)
    free = check_space(snapshots_dir, needed)

    plan = SnapshotPlan(
        image_id=image_id,
        image_name=image['name'],
        live=live,
        power_state=state,
        disk_dev=disk_dev,
        disk_path=disk_path,
        disk_format=disk_format,
        chain=node,
        virtual_size=int(disk_info['virtual-size']),
        image_format=image_format,
        compress=compress,
        quiesce=quiesce,
        require_quiesce=require_quiesce,
        work_dir=work_dir,
        space_needed=needed,
        capture_method=method,
        compression_type=CONF.snapdriver.compression_type,
        hashes=upload.hashes_for(novacompat.image_api(driver), context,
                                 image, instance),
        suspend=suspend)
    LOG.info('Planned %(kind)s snapshot (capture method %(method)s'
             '%(single)s) of %(disk)s (%(fmt)s, %(vsize)s virtual, backed '
             'by %(backing)s) into a %(ofmt)s image %(hashed)s: '
             'needs %(needed)s in %(dir)s, %(free)s free',
             {'kind': 'live' if live else 'cold', 'disk': disk_path,
              'method': method if live or method == 'stream' else 'none',
              'single': (', single copy' if plan.single_copy else
                         ', the guest suspended while its disk is read'
                         if suspend else ''),
              'fmt': disk_format,
              'vsize': progress.human_size(plan.virtual_size),
              'backing': ('%s %s' % (plan.backing_format, plan.backing_file)
                          if plan.backing_file else 'nothing'),
              'ofmt': image_format,
              'hashed': ('hashed with %s' % ' and '.join(plan.hashes)
                         if plan.hashes else
                         'not hashed (verify_upload_hash is off)'),
              'needed': progress.human_size(needed), 'dir': snapshots_dir,
              'free': progress.human_size(free)}, instance=instance)
    return plan
