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
Seconds to wait for the block copy of a live snapshot to become ready.

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
]


def register_opts(conf):
    conf.register_group(snapdriver_group)
    conf.register_opts(snapdriver_opts, group=snapdriver_group)


def list_opts():
    return [(snapdriver_group, snapdriver_opts)]


register_opts(cfg.CONF)
