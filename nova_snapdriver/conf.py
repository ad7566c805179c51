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

"""The ``[snapdriver]`` options.

Only what nova does not already offer lives here: where snapshots are
staged, the output format and compression come from nova's own
``[libvirt] snapshots_directory``, ``snapshot_image_format`` and
``snapshot_compression``.
"""

from oslo_config import cfg

snapdriver_group = cfg.OptGroup(
    'snapdriver',
    title='nova-snapdriver options',
    help="""
Options for the nova-snapdriver compute driver, a subclass of nova's libvirt
driver that replaces its ``snapshot()`` (the ``createImage`` server action).
Set ``[DEFAULT] compute_driver = snapdriver.SnapLibvirtDriver`` to use it.
Everything else the driver does is nova's libvirt driver, configured as usual
in ``[libvirt]``.
""")

snapdriver_opts = [
    cfg.IntOpt('block_job_timeout',
               default=1800,
               min=1,
               help="""
Seconds to wait for the block copy of a live snapshot to become ready, or
for its backup to complete (``capture_method = backup``).

A live snapshot mirrors the root disk into a temporary overlay.  The mirror
must converge before the copy can be taken.  A guest that writes faster than
the copy proceeds, or a stuck storage backend, would otherwise keep the
domain transient forever (nova's in-tree driver has no limit at all).  When
the timeout expires the job is aborted, the domain is redefined and the
snapshot fails with an error that names the timeout.

Possible values:

* Any positive integer, in seconds.  Size it from your largest root disk and
  the copy bandwidth: a 100 GiB disk at 200 MiB/s needs about 9 minutes.

Related options:

* ``block_job_bandwidth``: a bandwidth limit makes the copy slower, so the
  timeout must allow for it.
"""),
    cfg.IntOpt('block_job_bandwidth',
               default=0,
               min=0,
               help="""
Bandwidth limit, in MiB/s, of the block copy of a live snapshot.

The copy competes with the guest for disk bandwidth.  A limit keeps the guest
responsive while a snapshot runs, at the price of a longer snapshot.

Possible values:

* 0: no limit (the default).
* A positive integer: the limit in MiB/s, passed to libvirt's blockRebase.

Related options:

* ``block_job_timeout``
"""),
    cfg.FloatOpt('block_job_poll_interval',
                 default=0.5,
                 min=0.05,
                 help="""
Seconds between two checks of the block copy while waiting for it.

Each check asks libvirt for the job's progress and, once the cursor reaches
the end, whether the mirror is ready.  A job that is gone before it became
ready has failed or was cancelled, and the snapshot fails.
"""),
    cfg.IntOpt('progress_log_interval',
               default=10,
               min=1,
               help="""
Seconds between two progress lines (percent done) in the compute log while a
block copy runs.
"""),
    cfg.IntOpt('reserved_space_mb',
               default=256,
               min=0,
               help="""
Space, in MiB, to keep free in the snapshots directory on top of what a
snapshot needs.

Before touching the domain the driver measures the space the snapshot needs
(``qemu-img measure`` of the image plus the temporary overlay) and refuses,
with an error naming the directory and the sizes, when what is free minus
this reserve is smaller.  nova's in-tree driver does not check, and fills the
disk of the compute host instead.

Related options:

* ``[libvirt] snapshots_directory``: where snapshots are staged.
"""),
    cfg.IntOpt('convert_coroutines',
               default=16,
               min=1,
               max=16,
               help="""
Number of parallel coroutines ``qemu-img convert`` uses (its ``-m`` option)
when it writes the snapshot image.  Writes are out of order (``-W``); the
result is identical, only faster.
"""),
    cfg.BoolOpt('verify_upload_hash',
                default=True,
                help="""
Hash each snapshot image as it is uploaded, and compare the hash with the
one Glance stored (``os_hash_value``).

Glance hashes what it receives.  A different hash means the bytes were
damaged on the way, and the snapshot fails rather than leave a corrupt image
active; nova's in-tree driver does not look.  The upload is hashed with
Glance's own algorithm (``os_hash_algo``), learnt before the snapshot
begins.  That costs the compute host CPU: about 1.5 CPU seconds per GiB with
Glance's default sha512, 0.7 with sha256 on a CPU with SHA extensions, a
third or more of what a stream spends.

Possible values:

* True: the hash and the size Glance stored are compared with what was
  sent.
* False: only the size is compared; nothing is hashed on the compute host.
  Glance still hashes the image, so it keeps its ``os_hash_value``.

Related options:

* Glance's ``[DEFAULT] hashing_algorithm``: sha256 costs half of sha512
  where the CPU has SHA extensions.
"""),
    cfg.StrOpt('journal_path',
               default='$state_path/snapdriver-journal',
               help="""
Directory for the journal of snapshots in flight.

Before a snapshot touches the domain it writes a record here (the domain's
saved definition, the temp files, the phase), and removes it when done.  If
nova-compute dies in the middle, the record lets the driver repair
everything at the next start (``init_host``), or
``nova-snapdriver-manage recover`` at any time.  Records can hold secrets
from the domain XML: the directory is created with mode 0700 and records
with mode 0600.  Keep it on a local, persistent filesystem.

Related options:

* ``[DEFAULT] state_path``
"""),
    cfg.IntOpt('libvirt_reconnect_timeout',
               default=60,
               min=1,
               help="""
Seconds to wait for libvirtd to answer again when the connection is lost
during a snapshot.

libvirtd restarts (package upgrades, an OOM kill, a crash) or its keepalive
times out while a block job runs.  The domain handle of the snapshot then
belongs to a dead connection.  The driver looks the domain up again through
nova's connection, which reconnects, and aborts the job, redefines the
domain and checks both there.  While libvirtd does not answer it retries
for this long; after that the snapshot fails, its journal record is kept
and the repair is left to recovery (``recovery_interval``).

Related options:

* ``recovery_interval``
"""),
    cfg.IntOpt('recovery_interval',
               default=300,
               min=0,
               help="""
Seconds between two runs of the driver's recovery inside nova-compute.

Recovery repairs what an interrupted snapshot left (see ``journal_path``):
it aborts a leftover block job of ours, redefines a domain left transient,
deletes temp files and the queued image.  It always runs when nova-compute
starts and before each snapshot; this runs it periodically too, so a
domain left transient by a snapshot whose redefine failed (libvirtd away
for longer than ``libvirt_reconnect_timeout``) is repaired without waiting
for the next start of nova-compute.  Records of snapshots in flight are
never touched.

Possible values:

* 0: only at start-up and before each snapshot.
* A positive integer: the interval, in seconds.
"""),
    cfg.IntOpt('stream_scratch_max_mb',
               default=0,
               min=0,
               help="""
Largest size, in MiB, the scratch file of a streaming snapshot
(``capture_method = stream``) may reach before the snapshot is ended.

While a snapshot streams, QEMU copies every block the guest overwrites into
a scratch file in the snapshot's work dir, so that the image stays the disk
as it was when the snapshot began.  The file cannot shrink (QEMU < 9.1),
and if its filesystem fills up the *guest's* writes fail.  The driver
watches it and ends the backup (not the guest's writes) when it passes this
size or when free space falls to ``reserved_space_mb``; the snapshot then
fails with an error that names this option.

Possible values:

* 0: bounded by free space only.  The plan then requires free space for
  the worst case, the disk's allocated size.
* A positive integer: the cap in MiB; the plan requires this much free.

Related options:

* ``reserved_space_mb``, ``[libvirt] snapshots_directory``
"""),
    cfg.StrOpt('capture_method',
               default='auto',
               choices=[
                   ('rebase', 'The classic sequence nova\'s in-tree driver '
                    'runs: undefine the persistent domain, '
                    'blockRebase(COPY|SHALLOW|REUSE_EXT) into an overlay, '
                    'wait for the mirror to be ready, abort it, redefine '
                    'the domain, then qemu-img convert.  Works with every '
                    'libvirt nova supports; the domain is transient for '
                    'the whole copy.'),
                   ('copy', 'virDomainBlockCopy with '
                    'VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB|SHALLOW|REUSE_EXT '
                    'into an overlay: the same mirror, ready wait and '
                    'abort as rebase, but the domain is never undefined.  '
                    'Then qemu-img convert.'),
                   ('backup', 'virDomainBackupBegin in push mode: a full '
                    'backup of the root disk written by QEMU directly as '
                    'the image, in its final format, with no overlay and '
                    'no undefine.  Point in time at the start of the '
                    'backup.  Uncompressed images need no convert pass at '
                    'all (one copy of the data instead of two); with '
                    '[libvirt] snapshot_compression the backup is '
                    'converted once more to compress it.'),
                   ('stream', 'A pull-mode backup (virDomainBackupBegin '
                    'mode=pull) exported over NBD on a unix socket and read '
                    'with libnbd, streamed straight to Glance as a raw or '
                    'qcow2 image laid out from the allocation map: no temp '
                    'image, one pass, point in time at the start, no '
                    'undefine.  Only a scratch file for the blocks the '
                    'guest overwrites meanwhile (stream_scratch_max_mb).  '
                    'Needs libnbd\'s Python binding (python3-libnbd) and '
                    'libvirt >= 7.2; images are never compressed (with '
                    '[libvirt] snapshot_compression, copy is used).'),
                   ('auto', 'stream if the domain capabilities report '
                    '<backup supported=\'yes\'/>, libnbd is importable and '
                    'QEMU\'s socket is within nova\'s reach, else backup '
                    'if the capabilities report it and libvirt-python has '
                    'backupBegin, else copy if libvirt has '
                    'VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB, else rebase.  '
                    'With [libvirt] snapshot_compression on a qcow2 '
                    'image, copy before backup (a compressed backup '
                    'costs a second full copy and pass).'),
               ],
               help="""
How a live snapshot captures the running root disk.

Consistency differs between the methods:

* ``rebase`` and ``copy`` mirror the disk into an overlay until the mirror
  has converged, then abort the mirror.  The image holds the disk as it was
  at the instant of the abort (the end of the copy), with every write the
  guest finished before it.  A guest that writes faster than the copy can
  delay convergence (see ``block_job_timeout``).
* ``backup`` is point in time at the instant the backup began: QEMU copies
  each block out before the guest overwrites it (copy-before-write), so
  later writes never reach the image and the backup always converges.  It
  needs libvirt >= 7.2 with QEMU >= 4.2 (``<backup supported='yes'/>`` in
  ``virsh domcapabilities``).  ``block_job_bandwidth`` does not apply to it
  (libvirt's backup API has no rate limit).
* ``stream`` is point in time at its start too (a pull-mode backup), and
  is the capture and the upload in one pass: no temporary image at all,
  only a scratch file holding what the guest overwrites while it streams
  (``stream_scratch_max_mb``).  The image is never compressed.  On a host
  where nova-compute does not run as root, the nova user must be able to
  connect to the NBD socket QEMU creates: put it in the group QEMU runs as
  (``group`` in qemu.conf).  A stream runs under eventlet (nova 31 to 33
  start nova-compute so) as on native threads (nova 34).

Which to pick: ``rebase`` where the others are unavailable or to behave
exactly like nova's in-tree driver; ``copy`` to keep the domain persistent
throughout (no window in which a crash of nova-compute or libvirtd leaves
a transient domain); ``backup`` for the shortest and most predictable
snapshot with a persistent domain and, without compression, half the
temporary space and disk traffic; ``stream`` for the least time and
temporary space of all.  ``auto``, the default, picks the best this host
supports, for each snapshot.  The method actually used is logged with the
plan and recorded in the snapshot's journal record.

Related options:

* ``block_job_timeout``: bounds the mirror (rebase, copy) or the backup
  (not a stream, which the upload paces).
* ``stream_scratch_max_mb``
* ``[libvirt] snapshot_compression``, ``compression_type``
"""),
    cfg.StrOpt('compression_type',
               default='zlib',
               choices=[
                   ('zlib', 'qcow2 clusters compressed with zlib (deflate), '
                    'what nova\'s in-tree driver writes; readable by every '
                    'qemu-img.'),
                   ('zstd', 'qcow2 clusters compressed with zstd '
                    '(qemu-img convert -o compression_type=zstd): much '
                    'faster to write and read, similar size; needs QEMU >= '
                    '5.1 wherever the image is used.'),
               ],
               help="""
Compression algorithm of qcow2 snapshot images when ``[libvirt]
snapshot_compression`` is on.  Without snapshot_compression, or for raw
images, nothing is compressed and this option is ignored.

Related options:

* ``[libvirt] snapshot_compression``, ``[libvirt] snapshot_image_format``
"""),
]


def register_opts(conf):
    conf.register_group(snapdriver_group)
    conf.register_opts(snapdriver_opts, group=snapdriver_group)


def list_opts():
    return [(snapdriver_group, snapdriver_opts)]


register_opts(cfg.CONF)
