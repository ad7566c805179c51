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

"""Reading a disk ahead of the image stream, on a thread of its own.

A streamed image reads the disk in the order its layout says
(``Layout.reads()``), one piece per ``read()`` of the upload.  Read on the
upload's own thread, each piece waits for the disk and then for Glance:
the two never overlap.  ``ReadAhead`` reads on a thread of its own, up to
``depth`` pieces ahead of the stream, so that the disk is read while
Glance takes the pieces before.

One NBD request at a time, synchronously (``export.pread``).  libnbd's
asynchronous reads would keep more than one in flight (four read QEMU's
export at 400 MiB/s here, one at 134-160 MiB/s, which is still faster than
Glance takes it), but Debian 12's binding (libnbd 1.14) never frees an
``aio_pread`` buffer: reading 512 MiB that way grew the process by 512 MiB.

Why ``depth`` bounds what is read *and* not yet taken: when the upload
stalls (Glance is slow, or gone), nothing may be left in flight.  QEMU
cannot end a pull backup while a reply to one of its NBD requests waits
for its client to read it, and ending the backup is how the scratch guard
stops the copy-before-write from filling the disk.  The thread reads a
piece only while fewer than ``depth`` are being read, read and waiting, or
being handed out; so in a stall it holds at most ``depth`` pieces, and
its last request has been answered.

The thread and what it shares with the stream are the OS's, under
eventlet too (``novacompat.os_threads``): nova's image API reads the
stream in a native thread there.

Nothing here knows libnbd; ``stream.Export`` does.
"""

from oslo_log import log as logging

from nova_snapdriver import novacompat

LOG = logging.getLogger(__name__)

# Pieces read ahead of the stream (see the module docstring).
DEPTH = 4
# The size of one request: what the image API reads at a time.
CHUNK = 1024 * 1024

# How long close() waits for the request being read (a hung export), and
# read() for the next piece: QEMU on this host answers in milliseconds.
STOP_TIMEOUT = 30
READ_TIMEOUT = 300

# What the reading thread queues after the last piece, and when stopped.
_END = object()
_STOPPED = object()


class ReadAhead(object):
    """``read(offset, length)`` for a stream that reads ``ranges`` in order.

    ``ranges``: the ``(offset, length)`` pieces of the disk the stream
    reads, in the order it reads them.  A thread reads them in requests of
    at most ``chunk`` bytes, at most ``depth`` of them being read, read and
    waiting, or being handed out.  ``read`` serves the pieces in that
    order, in whatever sizes it is called with; a read anywhere else (a
    rewind, for an upload retry), or the next read after one that raised,
    stops the thread and starts one from there.  ``close()`` stops the
    thread; the export may be closed then.
    """

    def __init__(self, export, ranges, depth=DEPTH, chunk=CHUNK):
        if depth < 1 or chunk < 1:
            raise ValueError('depth and chunk must be at least 1, not %r '
                             'and %r' % (depth, chunk))
        self._export = export
        self._ranges = list(ranges)
        self._depth = depth
        self._chunk = chunk
        self._reader = None
        # The piece being handed out: (offset, length, data or error), or
        # _END; and how many of its bytes were.
        self._head = None
        self._used = 0

    def _split(self, offset):
        """Requests from ``offset``, in its range, to the last range's end."""
        found = False
        for start, length in self._ranges:
            end = start + length
            if not found:
                if not start <= offset < end:
                    continue
                found = True
                start = offset
            while start < end:
                size = min(self._chunk, end - start)
                yield start, size
                start += size

    def _position(self):
        """The disk offset the next ``read`` is expected at, or None."""
        reader = self._reader
        if reader is None:
            return None
        if self._head is None:
            try:
                self._head = reader.ready.get(timeout=READ_TIMEOUT)
            except reader.empty:
                raise IOError('the NBD export answered no read for %d s'
                              % READ_TIMEOUT)
            self._used = 0
        if self._head is _END:
            return None
        if self._head is _STOPPED:
            raise IOError('the read-ahead was closed under a read')
        if self._head[0] is None:
            self._fail()  # the thread failed, not a read
        return self._head[0] + self._used

    def _fail(self):
        """Raise the error at the head; the next read starts afresh."""
        error = self._head[2]
        self.close()  # the thread ended after queuing it
        raise error

    def _restart(self, offset):
        self.close()
        if not any(start <= offset < start + length
                   for start, length in self._ranges):
            raise IOError('reading the disk at %d: the stream reads no '
                          'range there' % offset)
        self._reader = _Reader(self._export, self._split(offset),
                               self._depth)

    def close(self):
        """Stop reading ahead, once the request being read is answered.

        True if the reading thread ended; False if a read did not return
        within STOP_TIMEOUT (the export must not be closed under it).
        """
        stopped = True
        if self._reader is not None:
            stopped = self._reader.stop()
        self._reader = None
        self._head = None
        self._used = 0
        return stopped

    def read(self, offset, length):
        """``length`` bytes of the disk at ``offset``, bytes-like."""
        if self._position() != offset:
            self._restart(offset)
        reader = self._reader
        pieces = []
        at, end = offset, offset + length
        while at < end:
            if self._position() != at:
                # A read never spans two ranges, nor runs past the last.
                raise IOError('reading the disk at %d: %d bytes asked, but '
                              'the range read there ends at %d'
                              % (offset, length, at))
            start, size, data = self._head
            if isinstance(data, Exception):
                self._fail()
            if len(data) != size:
                raise IOError('reading the disk at %d: %d bytes asked, %d '
                              'returned' % (start, size, len(data)))
            take = min(end - at, size - self._used)
            if take == size:
                pieces.append(data)
            else:
                pieces.append(memoryview(data)[self._used:self._used + take])
            self._used += take
            at += take
            if self._used == size:
                self._head = None
                reader.done_with_one()
        return pieces[0] if len(pieces) == 1 else b''.join(pieces)


class _Reader(object):
    """The thread that reads ``requests`` ahead of the stream.

    ``ready`` gets ``(offset, length, data)`` for each request in order,
    then ``_END``; or, at the first failure, ``(offset, length, error)``
    (``offset`` None if no read failed) and nothing after it; or, stopped,
    ``_STOPPED``.  A request is read only while fewer than ``depth`` are
    being read, read and waiting, or being handed out (``done_with_one``
    says one was handed out).
    """

    def __init__(self, export, requests, depth):
        threading, queue = novacompat.os_threads()
        self.ready = queue.Queue()
        self.empty = queue.Empty
        self._export = export
        self._slots = threading.Semaphore(depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(requests,), daemon=True,
            name='snapdriver-read-ahead')
        self._thread.start()

    def done_with_one(self):
        self._slots.release()

    def stop(self):
        """Stop the thread; True if it ended within STOP_TIMEOUT."""
        self._stopped.set()
        self._slots.release()  # if it waits for a slot
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            LOG.warning('The read-ahead of the NBD export is still waiting '
                        'for a read after %d s; going on without it',
                        STOP_TIMEOUT)
            return False
        return True

    def _run(self, requests):
        at = (None, 0)  # the request being read
        try:
            for offset, length in requests:
                self._slots.acquire()
                if self._stopped.is_set():
                    return
                at = (offset, length)
                data = self._export.pread(offset, length)
                at = (None, 0)
                self.ready.put((offset, length, data))
            self.ready.put(_END)
        except Exception as e:
            self.ready.put(at + (e,))
        finally:
            if self._stopped.is_set():
                # Whoever waits for a piece learns there will be none.
                self.ready.put(_STOPPED)
