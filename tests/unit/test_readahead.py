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

"""readahead: the disk read a few pieces ahead of the image stream.

The export is ``Export``: a disk in memory whose reads are answered only
while a gate is open, and which records what was asked and by which
thread, so the tests see what was read ahead, and when.  The streams
are ``imagestream``'s real layouts and ``StreamReader``; what they give
through a ``ReadAhead`` must equal what they give reading the disk
directly.
"""

import random
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from nova_snapdriver import imagestream
from nova_snapdriver import novacompat
from nova_snapdriver import readahead
from tests.unit import base  # noqa: F401  nova's tests: eventlet patched
from tests.unit import test_imagestream

# nova's image API reads a stream on an OS thread, under eventlet too (a
# native thread of its pool): the tests read and close from OS threads.
threading, _ = novacompat.os_threads()

KiB = 1024
MiB = 1024 * KiB


class ReadFailed(Exception):
    """What a failed read raises when it is finished."""


class Export(object):
    """A disk in memory whose reads record what was asked, and when.

    ``started``: every ``(offset, length)`` asked for, in order, and
    ``threads`` the thread that asked for each.  ``reading``: reads begun
    and not yet answered; ``answered``: reads that returned or raised.  A
    read whose offset is in ``fail_at`` raises ReadFailed, one in
    ``short_at`` returns a byte less.  Reads are
    answered only while ``gate`` is set.
    """

    def __init__(self, data):
        self.data = data
        self.started = []
        self.threads = []
        self.reading = 0
        self.answered = 0
        self.fail_at = set()
        self.short_at = set()
        self.gate = threading.Event()
        self.gate.set()

    def pread(self, offset, length):
        assert 0 < length and 0 <= offset and offset + length <= len(
            self.data), (offset, length)
        self.reading += 1
        self.started.append((offset, length))
        self.threads.append(threading.current_thread())
        try:
            assert self.gate.wait(10)
            if offset in self.fail_at:
                raise ReadFailed('the read at %d failed' % offset)
            if offset in self.short_at:
                length -= 1
            return bytearray(self.data[offset:offset + length])
        finally:
            self.answered += 1
            self.reading -= 1

    def settled(self, count):
        """Wait for ``count`` reads answered; fail if more are asked for.

        The thread is then waiting for the stream (or done): a read it
        would ask for now would show within the next 0.2 s.
        """
        deadline = time.monotonic() + 10
        while self.answered < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.answered >= count, (
            '%d reads answered of %d' % (self.answered, count))
        time.sleep(0.2)
        assert (len(self.started), self.answered) == (count, count), (
            'asked for %d reads, %d answered; %d expected'
            % (len(self.started), self.answered, count))


def disk(size, seed=1):
    return random.Random(seed).randbytes(size)


def test_reads_in_any_size_give_the_ranges_bytes():
    data = disk(5 * MiB)
    export = Export(data)
    ranges = [(100, 3 * MiB + 5), (4 * MiB, 7)]
    ahead = readahead.ReadAhead(export, ranges)

    got = [ahead.read(100, 1000), ahead.read(1100, MiB + 3),
           ahead.read(MiB + 1103, 2 * MiB - 998), ahead.read(4 * MiB, 7)]

    assert b''.join(got) == data[100:3 * MiB + 105] + data[4 * MiB:][:7]
    # Asked in requests of at most 1 MiB, each byte once.
    assert export.started == [(100, MiB), (MiB + 100, MiB),
                              (2 * MiB + 100, MiB), (3 * MiB + 100, 5),
                              (4 * MiB, 7)]
    assert export.reading == 0


def test_a_stalled_stream_leaves_no_read_unanswered():
    """While the stream does not read, depth pieces wait, none is asked.

    QEMU cannot end a pull backup while a reply waits to be read: the
    scratch guard's abort must not hang on a stalled upload.
    """
    export = Export(disk(10 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 10 * MiB)], depth=3)

    ahead.read(0, 1000)
    export.settled(3)

    # The piece handed out from and two more: read, none asked for.
    assert export.started == [(0, MiB), (MiB, MiB), (2 * MiB, MiB)]
    assert export.reading == 0
    ahead.read(1000, MiB - 1000)
    export.settled(4)
    assert export.started[3:] == [(3 * MiB, MiB)]
    ahead.close()


def test_the_thread_stays_depth_pieces_ahead_to_the_end():
    export = Export(disk(8 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 8 * MiB)], depth=3)

    for piece in range(8):
        ahead.read(piece * MiB, MiB)
        # Handed out: piece + 1; ahead of the stream: 3, or what is left.
        export.settled(min(piece + 1 + 3, 8))
    ahead.close()


def test_a_read_after_a_failed_one_reads_again():
    """An upload retry rewinds to the first byte, which failed before."""
    data = disk(4 * MiB)
    export = Export(data)
    export.fail_at = {0}
    ahead = readahead.ReadAhead(export, [(0, 4 * MiB)])
    with pytest.raises(ReadFailed):
        ahead.read(0, 100)
    export.fail_at = set()

    assert ahead.read(0, 100) == data[:100]
    assert export.started.count((0, MiB)) == 2
    ahead.close()


def test_close_from_another_thread_never_leaves_a_read_waiting():
    export = Export(disk(4 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 4 * MiB)], depth=1)
    ahead.read(0, MiB)
    export.gate.clear()  # the next piece is being read, and waits
    got = []

    def read_next():
        try:
            got.append(ahead.read(MiB, MiB))
        except IOError as e:
            got.append(e)
    reading = threading.Thread(target=read_next)
    reading.start()
    closing = threading.Thread(target=ahead.close)
    closing.start()
    time.sleep(0.2)
    export.gate.set()
    closing.join(10)
    reading.join(10)

    assert not closing.is_alive() and not reading.is_alive()
    assert len(got) == 1


def test_close_waits_for_the_read_being_answered():
    export = Export(disk(10 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 10 * MiB)], depth=2)
    ahead.read(0, 100)
    export.settled(2)
    export.gate.clear()
    ahead.read(100, MiB - 100)  # frees a slot: a read begins, and waits
    deadline = time.monotonic() + 10
    while not export.reading and time.monotonic() < deadline:
        time.sleep(0.01)
    assert export.reading == 1
    closing = threading.Thread(target=ahead.close)

    closing.start()
    closing.join(0.3)
    assert closing.is_alive()
    export.gate.set()
    closing.join(10)

    assert not closing.is_alive()
    assert export.reading == 0
    # Nothing was asked for after the close.
    assert len(export.started) == 3


def test_close_says_whether_the_thread_ended(monkeypatch):
    # The export may be closed only under no read: close() tells.
    monkeypatch.setattr(readahead, 'STOP_TIMEOUT', 0.2)
    export = Export(disk(10 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 10 * MiB)], depth=2)
    ahead.read(0, 100)
    export.settled(2)
    export.gate.clear()
    ahead.read(100, MiB - 100)  # frees a slot: a read begins, and hangs
    deadline = time.monotonic() + 10
    while not export.reading and time.monotonic() < deadline:
        time.sleep(0.01)

    assert ahead.close() is False
    export.gate.set()
    assert readahead.ReadAhead(export, [(0, MiB)]).close() is True


def test_a_read_that_never_comes_raises_after_its_timeout(monkeypatch):
    # A hung export fails the stream (and so ends the backup) in bounded
    # time instead of holding the upload forever.
    monkeypatch.setattr(readahead, 'READ_TIMEOUT', 0.2)
    monkeypatch.setattr(readahead, 'STOP_TIMEOUT', 0.2)
    export = Export(disk(MiB))
    export.gate.clear()
    ahead = readahead.ReadAhead(export, [(0, MiB)])

    with pytest.raises(IOError, match='answered no read for 0 s'):
        ahead.read(0, 100)
    export.gate.set()
    ahead.close()


def test_nothing_is_asked_for_past_the_last_range():
    export = Export(disk(3 * MiB))
    ahead = readahead.ReadAhead(export, [(0, 1000), (2 * MiB, 500)],
                                depth=8)

    assert ahead.read(0, 1000) == export.data[:1000]
    assert ahead.read(2 * MiB, 500) == export.data[2 * MiB:2 * MiB + 500]
    assert export.started == [(0, 1000), (2 * MiB, 500)]
    assert export.reading == 0


def test_a_rewind_stops_the_thread_and_starts_again():
    data = disk(8 * MiB)
    export = Export(data)
    ahead = readahead.ReadAhead(export, [(0, 8 * MiB)])
    ahead.read(0, MiB)
    ahead.read(MiB, 100)
    first = export.threads[0]

    assert ahead.read(0, 2 * MiB) == data[:2 * MiB]

    # A new thread reads from the first byte again; the old one ended.
    assert not first.is_alive()
    again = export.threads.index(export.threads[-1])
    assert export.threads[again] is not first
    assert export.started[again:again + 2] == [(0, MiB), (MiB, MiB)]
    ahead.close()


def test_a_failed_read_raises_its_error():
    export = Export(disk(4 * MiB))
    export.fail_at = {MiB}
    ahead = readahead.ReadAhead(export, [(0, 4 * MiB)])
    ahead.read(0, MiB)

    with pytest.raises(ReadFailed):
        ahead.read(MiB, MiB)


def test_a_short_read_is_an_error():
    export = Export(disk(MiB))
    export.short_at = {0}
    ahead = readahead.ReadAhead(export, [(0, 1000)])

    with pytest.raises(IOError, match='1000 bytes asked, 999 returned'):
        ahead.read(0, 10)


def test_a_read_outside_the_ranges_is_an_error():
    export = Export(disk(MiB))
    ahead = readahead.ReadAhead(export, [(0, 1000), (5000, 100)])

    with pytest.raises(IOError, match='reads no range there'):
        ahead.read(2000, 10)
    assert export.started == []


def test_a_read_across_two_ranges_is_an_error():
    export = Export(disk(MiB))
    ahead = readahead.ReadAhead(export, [(0, 1000), (2000, 100)])

    with pytest.raises(IOError, match='the range read there ends at 1000'):
        ahead.read(0, 1100)


def test_depth_and_chunk_must_be_positive():
    for depth, chunk in ((0, 1), (1, 0)):
        with pytest.raises(ValueError):
            readahead.ReadAhead(Export(b'x'), [(0, 1)], depth, chunk)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 2 * MiB + 5),
       cuts=st.lists(st.integers(0, 2 * MiB + 5), max_size=12),
       first_data=st.booleans(), image_format=st.sampled_from(['raw',
                                                               'qcow2']),
       depth=st.integers(1, 6),
       chunk=st.sampled_from([65536 - 1, 300001, MiB]),
       read_size=st.sampled_from([-1, 1, 65536 + 3, 300000]),
       rewind_after=st.integers(0, 20))
def test_a_stream_through_readahead_equals_one_reading_directly(
        size, cuts, first_data, image_format, depth, chunk, read_size,
        rewind_after):
    # An allocation map: alternating data and zeros between the cuts.
    points = sorted({c for c in cuts if 0 < c < size} | {0, size})
    extents = [imagestream.Extent(lo, hi - lo, (n % 2 == 0) == first_data)
               for n, (lo, hi) in enumerate(zip(points, points[1:]))]
    layout = getattr(imagestream, image_format + '_layout')(size, extents)
    export = Export(disk(size, seed=size))
    expected = test_imagestream.all_bytes(
        imagestream.StreamReader(layout, export.pread))

    ahead = readahead.ReadAhead(export, layout.reads(), depth, chunk)
    reader = imagestream.StreamReader(layout, ahead.read)
    for _ in range(rewind_after):
        if not reader.read(read_size):
            break
    reader.seek(0)
    assert test_imagestream.all_bytes(reader, read_size) == expected
    ahead.close()
    # What the last thread (the one after the rewind) asked for.
    last = export.threads[-1] if export.threads else None
    export.started = [r for r, t in zip(export.started, export.threads)
                      if t is last]

    # After the rewind, each byte of the ranges was asked for once, in
    # order, in requests of at most ``chunk``.
    assert all(0 < length <= chunk for _, length in export.started)
    merged = []
    for offset, length in export.started:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((offset, length))
    wanted = []
    for offset, length in layout.reads():
        if wanted and wanted[-1][0] + wanted[-1][1] == offset:
            wanted[-1] = (wanted[-1][0], wanted[-1][1] + length)
        else:
            wanted.append((offset, length))
    assert merged == wanted


def test_layout_reads_are_the_ranges_of_its_segments():
    size = 5 * MiB + 77
    extents = [imagestream.Extent(0, 100, True),
               imagestream.Extent(100, MiB, False),
               imagestream.Extent(MiB + 100, 4 * MiB - 23, True)]
    for make in (imagestream.raw_layout, imagestream.qcow2_layout):
        layout = make(size, extents)
        assert list(layout.reads()) == [
            s for s in layout.segments() if isinstance(s, tuple)]
