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

"""A shut-off instance's disk, read over NBD straight into Glance.

Shelve, snapshots of stopped servers, and createBackup of them: with
``[snapdriver] capture_method`` ``stream`` or ``auto``, a cold snapshot
takes the same path as a live stream, with no temp image and no convert
pass (``plan.cold_method`` says when it can).

1. ``qemu-nbd --read-only`` exports the disk's chain, pinned as
   ``chain`` pins it (one ``json:`` filename, every backing node named,
   nothing probed).  libnbd starts it by systemd socket activation: no
   socket on disk, we are its only client (``--shared=1``), and it exits
   when our connection closes, or with nova-compute.
2. While it reads, it holds QEMU's shared lock on every image of the
   chain: a QEMU that would start the domain cannot take its write lock,
   so the domain stays shut off, and the disk as it was, until the read
   is done.
3. ``stream.reader`` lays the image out from the allocation map and
   reads it ahead; nova's image API uploads it, verified against Glance's
   hash, as a live stream is.

A guest saved for its snapshot (``suspend``) is streamed the same way,
but ``read_done`` starts it again as soon as the last byte is read
(``LastByte``): qemu-nbd is gone by then, so QEMU can take its lock.
"""

import io

from oslo_log import log as logging

from nova_snapdriver import novacompat
from nova_snapdriver import plan as snapshot_plan
from nova_snapdriver import progress
from nova_snapdriver import stream

LOG = logging.getLogger(__name__)


class NoScratch(object):
    """A cold read has no scratch file to guard."""

    error = None
    peak = 0

    def check(self):
        pass


class LastByte(object):
    """The image stream, which calls ``done()`` once its last byte is read.

    ``done`` runs inside the ``read`` that returns the last bytes, once:
    the upload has every byte by then, and only Glance's finishing is
    left.  After it, the disk may change (the guest runs again), so going
    back to read it again (an upload's retry) fails with a clear error
    instead of reading another disk.  Seeking forward, to measure the
    size as requests does, is left to the stream.
    """

    def __init__(self, stream, size, done):
        self._stream = stream
        self.size = size
        self._done = done
        self._read = 0  # bytes returned since the last rewind
        self.finished = False

    def readable(self):
        return True

    def seekable(self):
        return self._stream.seekable()

    def tell(self):
        return self._stream.tell()

    def read(self, size=-1):
        data = self._stream.read(size)
        self._read += len(data)
        if self._read >= self.size and not self.finished:
            self.finished = True
            self._done()
        return data

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            target = offset + self._stream.tell()
        elif whence == io.SEEK_END:
            target = offset + self.size
        else:
            target = offset
        if self.finished and target < self._read:
            raise io.UnsupportedOperation(
                'the disk was read to its end and the guest started again, '
                'so the disk may have changed since: it is not read again')
        position = self._stream.seek(offset, whence)
        if position == 0:
            self._read = 0
        return position

    def close(self):
        self._stream.close()


def argv(plan):
    """qemu-nbd's command line: the chain, read-only, for one client."""
    return [snapshot_plan.QEMU_NBD, '--read-only', '--shared=1',
            plan.chain.filename()]


def stream_disk(instance, plan, step, upload, read_done=None):
    """Read the shut-off disk into ``upload(reader, size)``; its size.

    ``read_done()``: called once the disk's last byte is read and qemu-nbd
    has let it go (``LastByte``), while the upload may still run.
    """
    export = None
    try:
        step('streaming')
        # libnbd blocks: natively, under eventlet too (``stream``).
        export = novacompat.wait_natively(
            stream.Export, None, plan.disk_dev, instance, argv(plan))
        image, size = novacompat.wait_natively(
            stream.reader, export, plan, NoScratch(), instance)
        step('streaming', size=size)
        if read_done is not None:
            def last_byte_read():
                export.close()  # qemu-nbd exits: its shared lock goes
                read_done()
            image = LastByte(image, size, last_byte_read)
        upload(image, size)
        LOG.info('Streamed %(size)s from the shut-off disk',
                 {'size': progress.human_size(size)}, instance=instance)
        return size
    finally:
        if export is not None:
            export.close()  # qemu-nbd exits with the connection
