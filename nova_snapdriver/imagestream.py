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

"""The image as a forward-only stream: a raw or qcow2 image of a disk.

A streaming snapshot reads the running disk over NBD and hands the image to
Glance as it is read: no image file on the compute host, and nothing that
can seek back to fix up what was written earlier.  NBD block status gives
the disk's allocation map (a list of ``Extent``) before any data is read, and
from the map alone this module lays out the whole image in advance and knows
its exact size.  It holds:

- ``Extent``: one range of the allocation map;
- ``raw_layout`` and ``qcow2_layout``: the image laid out from the map, as a
  ``Layout``, whose ``size`` is the image's exact length and whose
  ``segments()`` are its pieces in stream order: literal bytes (header,
  tables, zero fill, padding) or ``(guest_offset, length)`` ranges of the
  disk to be read;
- ``StreamReader``: the file-like object for nova's image API and
  glanceclient; it reads the segments with the caller's ``pread`` and
  returns at most ``max_read`` (1 MiB) bytes per ``read()``, and it rewinds
  with ``seek(0)`` so that an upload can be retried.  A ``read()`` hands
  on what one ``pread`` returned as it is, never joined with other bytes:
  it ends short where the disk's data begins, so that the reads that
  follow line up with the read-ahead's requests (no copy of the data).

A raw image is the disk, every byte of it: zero extents become zero bytes
without reading the disk.

A qcow2 image is written from QEMU's specification (``docs/interop/qcow2.txt``
in QEMU) and nothing else.  It is version 3, with 64 KiB clusters, 16-bit
refcounts (``refcount_order`` 4), no backing file, no encryption, no
snapshots, no feature bits and no header extensions (only the end marker of
the header extension area).  The file is a run of host clusters, laid out so
that every table comes before what it points to:

====================  ===================================================
cluster 0             the header ("Header", with the version 3 fields up
                      to ``compression_type``, so ``header_length`` 112;
                      then "Header extensions": just the end marker)
refcount table        "Host cluster management": ``refcount_table_clusters``
                      clusters of pointers to the refcount blocks
refcount blocks       one 16-bit refcount per host cluster of the file;
                      every cluster of the file, these included, has
                      refcount 1 and every refcount past the end is 0
L1 table              "Cluster mapping": ``l1_size`` entries, one per 512
                      MiB of the virtual disk; an entry points to an L2
                      table, or is 0 where that range holds no data
L2 tables             only for the L1 entries whose range holds data; one
                      standard cluster descriptor per guest cluster, 0 for
                      an unallocated cluster (it reads as zeros, there is
                      no backing file)
data clusters         the allocated guest clusters, in guest order
====================  ===================================================

A guest cluster is allocated if any data extent overlaps it; it is then read
whole (its range clipped to the virtual size; the last cluster is padded
with zeros to the cluster size).  L1 and L2 entries carry the COPIED flag
(bit 63), as their refcount is exactly 1, as QEMU writes them.  The
refcount blocks count all clusters of the file, their own and the refcount
table's included: their number depends on the file's size, which depends on
their number, so it is found by iterating to a fixed point.

The header's ``size`` is the virtual size rounded up to a multiple of 512
bytes, the disk's size as QEMU presents it: QEMU rounds an image's ``size``
down to 512 bytes, and would drop the last bytes of a disk whose size is
not a multiple.  The bytes past the disk's end read as zeros (they are in
the last cluster's padding, or unallocated).

Memory stays small for any virtual size: the layout keeps the allocation as
runs of clusters (no more runs than data extents), and every table is made
one cluster at a time as the stream reaches it.
"""

import bisect
import io
import struct
from typing import NamedTuple

MAX_READ = 1024 * 1024

# Zero fill (raw holes) is emitted in chunks of this size, all one object.
_ZERO_CHUNK = MAX_READ
_ZEROS = bytes(_ZERO_CHUNK)

QCOW2_MAGIC = b'QFI\xfb'
QCOW2_VERSION = 3
# Version 3 fields up to and including compression_type (byte 104), padded
# to a multiple of 8, as the spec's "Header padding" requires.
QCOW2_HEADER_LENGTH = 112
# refcount_bits = 1 << refcount_order = 16.
REFCOUNT_ORDER = 4
REFCOUNT_BYTES = (1 << REFCOUNT_ORDER) // 8
# L1 and L2 entries: bit 63, "refcount is exactly one".
QCOW_OFLAG_COPIED = 1 << 63
# QEMU's implementation limits (qcow2.txt, "Header": size).
_MAX_CLUSTER_SIZE = 2 * 1024 * 1024
_MAX_L1_BYTES = 32 * 1024 * 1024


class Extent(NamedTuple):
    """One range of the disk's allocation map (NBD ``base:allocation``).

    The extents of a map cover ``[0, virtual_size)`` in order.  ``data``
    False means the range reads as zeros (a hole or zeroes) and is never
    read.
    """

    offset: int
    length: int
    data: bool


def _checked_extents(virtual_size, extents):
    """``extents`` as Extents, adjacent ones of a kind merged; or ValueError.

    They must cover ``[0, virtual_size)`` exactly, in order, without gaps
    or overlaps; empty ones are dropped.
    """
    if virtual_size < 0:
        raise ValueError('negative virtual size %d' % virtual_size)
    merged = []
    end = 0
    for offset, length, data in extents:
        if offset != end or length < 0:
            raise ValueError(
                'allocation map: extent (%d, %d) does not start at %d, '
                'where the previous one ends' % (offset, length, end))
        if length == 0:
            continue
        end = offset + length
        data = bool(data)
        if merged and merged[-1].data == data:
            last = merged.pop()
            merged.append(Extent(last.offset, end - last.offset, data))
        else:
            merged.append(Extent(offset, length, data))
    if end != virtual_size:
        raise ValueError('allocation map ends at %d, not at the virtual '
                         'size %d' % (end, virtual_size))
    return merged


def _ceil_div(a, b):
    return -(-a // b)


class Layout(object):
    """An image laid out in advance: its exact size and its pieces.

    ``size``: the number of bytes the stream has, known before any data is
    read.  ``segments()``: an iterator, in stream order, of either bytes
    (literal) or ``(guest_offset, length)`` ranges to read from the disk.
    ``disk_format``: 'raw' or 'qcow2'.  ``guest_bytes``: how many bytes
    of the disk the stream reads.
    """

    disk_format = None
    size = 0
    guest_bytes = 0

    def segments(self):
        raise NotImplementedError()

    def reads(self):
        """The ``(guest_offset, length)`` ranges of ``segments()``, alone."""
        raise NotImplementedError()


class RawLayout(Layout):
    """The disk as it is: data extents read, zero extents as zero bytes."""

    disk_format = 'raw'

    def __init__(self, virtual_size, extents):
        self.virtual_size = self.size = virtual_size
        self._extents = _checked_extents(virtual_size, extents)
        self.guest_bytes = sum(e.length for e in self._extents if e.data)

    def reads(self):
        for extent in self._extents:
            if extent.data:
                yield (extent.offset, extent.length)

    def segments(self):
        for extent in self._extents:
            if extent.data:
                yield (extent.offset, extent.length)
            else:
                yield from _zero_fill(extent.length)


def _zero_fill(length):
    """``length`` zero bytes, in chunks of at most ``_ZERO_CHUNK``."""
    whole, rest = divmod(length, _ZERO_CHUNK)
    for _ in range(whole):
        yield _ZEROS
    if rest:
        yield _ZEROS[:rest]


def raw_layout(virtual_size, extents):
    """A raw image of the disk described by ``extents``."""
    return RawLayout(virtual_size, extents)


class Qcow2Layout(Layout):
    """A qcow2 image of the disk; see the module docstring for the layout.

    Host clusters are counted in units of the cluster size; ``*_start``
    attributes are cluster numbers in the file.
    """

    disk_format = 'qcow2'

    def __init__(self, virtual_size, extents, cluster_size=65536):
        if (cluster_size < 512 or cluster_size > _MAX_CLUSTER_SIZE or
                cluster_size & (cluster_size - 1)):
            raise ValueError('cluster size %d is not a power of two from '
                             '512 to 2 MiB' % cluster_size)
        self.virtual_size = virtual_size
        # QEMU sees disks in 512-byte sectors: it rounds a disk's size up
        # (as qemu-img create does) and an image's size field down.
        self.header_size = _ceil_div(virtual_size, 512) * 512
        self.cluster_size = cluster_size
        self.cluster_bits = cluster_size.bit_length() - 1
        # Entries per L2 table and per refcount block.
        self.l2_entries = cluster_size // 8
        self.refblock_entries = cluster_size // REFCOUNT_BYTES

        self._find_allocated_runs(_checked_extents(virtual_size, extents))

        guest_clusters = _ceil_div(virtual_size, cluster_size)
        self.l1_size = _ceil_div(guest_clusters, self.l2_entries)
        if self.l1_size * 8 > _MAX_L1_BYTES:
            raise ValueError('virtual size %d needs an L1 table larger '
                             'than QEMU opens (32 MiB)' % virtual_size)
        self.l1_clusters = _ceil_div(self.l1_size * 8, cluster_size)
        # The L1 indexes that have an L2 table: those whose range holds an
        # allocated cluster, in order.
        self._l2_indexes = []
        for first, count, _ in self._runs:
            for index in range(first // self.l2_entries,
                               (first + count - 1) // self.l2_entries + 1):
                if not self._l2_indexes or self._l2_indexes[-1] < index:
                    self._l2_indexes.append(index)

        # The refcount blocks count every cluster of the file, themselves
        # and the refcount table included: grow both until they cover the
        # file they are part of.
        fixed = 1 + self.l1_clusters + len(self._l2_indexes) + \
            self.data_clusters
        self.refblocks = self.refcount_table_clusters = 1
        while True:
            total = fixed + self.refcount_table_clusters + self.refblocks
            refblocks = _ceil_div(total, self.refblock_entries)
            table_clusters = _ceil_div(refblocks * 8, cluster_size)
            if (refblocks, table_clusters) == (
                    self.refblocks, self.refcount_table_clusters):
                break
            self.refblocks = refblocks
            self.refcount_table_clusters = table_clusters
        self.total_clusters = total

        self.refcount_table_start = 1
        self.refblocks_start = 1 + self.refcount_table_clusters
        self.l1_start = self.refblocks_start + self.refblocks
        self.l2_start = self.l1_start + self.l1_clusters
        self.data_start = self.l2_start + len(self._l2_indexes)
        assert self.data_start + self.data_clusters == self.total_clusters
        self.size = self.total_clusters * cluster_size

    def _find_allocated_runs(self, extents):
        """Set ``_runs``: the allocated guest clusters, as merged runs.

        Each run is ``(first_cluster, count, data_index)``, ``data_index``
        being the run's first cluster's place among the data clusters.
        """
        size = self.cluster_size
        self._runs = []
        self.guest_bytes = 0
        data_clusters = 0
        for extent in extents:
            if not extent.data:
                continue
            first = extent.offset // size
            end = _ceil_div(extent.offset + extent.length, size)
            if self._runs:
                last_first, last_count, last_index = self._runs[-1]
                last_end = last_first + last_count
                if first <= last_end:
                    # Touches or shares a cluster with the previous run.
                    if end > last_end:
                        self._runs[-1] = (last_first, end - last_first,
                                          last_index)
                        data_clusters += end - last_end
                    continue
            self._runs.append((first, end - first, data_clusters))
            data_clusters += end - first
        self.data_clusters = data_clusters
        for first, count, _ in self._runs:
            self.guest_bytes += min(count * size,
                                    self.virtual_size - first * size)
        self._run_firsts = [run[0] for run in self._runs]

    def _offset(self, cluster):
        return cluster * self.cluster_size

    def header(self):
        """Cluster 0: the header, the end of extensions, zero padding."""
        header = struct.pack(
            '>4sIQIIQIIQQIIQQQQII',
            QCOW2_MAGIC,
            QCOW2_VERSION,
            0,                  # backing_file_offset: no backing file
            0,                  # backing_file_size
            self.cluster_bits,
            self.header_size,
            0,                  # crypt_method: none
            self.l1_size,
            self._offset(self.l1_start) if self.l1_size else 0,
            self._offset(self.refcount_table_start),
            self.refcount_table_clusters,
            0,                  # nb_snapshots
            0,                  # snapshots_offset
            0,                  # incompatible_features
            0,                  # compatible_features
            0,                  # autoclear_features
            REFCOUNT_ORDER,
            QCOW2_HEADER_LENGTH)
        # compression_type (byte 104) 0, zlib, and padding to 112; then the
        # end of the header extension area (type 0, length 0): all zeros.
        header += bytes(QCOW2_HEADER_LENGTH - len(header))
        header += struct.pack('>II', 0, 0)
        return header + bytes(self.cluster_size - len(header))

    def _refcount_table(self):
        """The refcount table's clusters: the refcount blocks' offsets."""
        per_cluster = self.cluster_size // 8
        for n in range(self.refcount_table_clusters):
            first = n * per_cluster
            count = max(0, min(per_cluster, self.refblocks - first))
            start = self._offset(self.refblocks_start + first)
            entries = range(start, start + count * self.cluster_size,
                            self.cluster_size)
            yield _pack_entries(entries, self.cluster_size)

    def _refcount_blocks(self):
        """Refcount 1 for each cluster of the file, 0 past its end."""
        full = struct.pack('>H', 1) * self.refblock_entries
        for n in range(self.refblocks):
            used = min(self.refblock_entries,
                       self.total_clusters - n * self.refblock_entries)
            if used == self.refblock_entries:
                yield full
            else:
                yield full[:used * REFCOUNT_BYTES] + bytes(
                    (self.refblock_entries - used) * REFCOUNT_BYTES)

    def _l1_table(self):
        """The L1 table's clusters: the L2 tables' offsets, 0 without."""
        per_cluster = self.cluster_size // 8
        for n in range(self.l1_clusters):
            table = bytearray(self.cluster_size)
            first = n * per_cluster
            lo = bisect.bisect_left(self._l2_indexes, first)
            hi = bisect.bisect_left(self._l2_indexes, first + per_cluster)
            for position in range(lo, hi):
                entry = (self._offset(self.l2_start + position) |
                         QCOW_OFLAG_COPIED)
                struct.pack_into('>Q', table,
                                 (self._l2_indexes[position] - first) * 8,
                                 entry)
            yield bytes(table)

    def _l2_tables(self):
        """Each L2 table: the data clusters' offsets, 0 where unallocated."""
        for index in self._l2_indexes:
            table = bytearray(self.cluster_size)
            first = index * self.l2_entries
            end = first + self.l2_entries
            run = max(0, bisect.bisect_right(self._run_firsts, first) - 1)
            while run < len(self._runs) and self._runs[run][0] < end:
                run_first, count, data_index = self._runs[run]
                lo = max(first, run_first)
                hi = min(end, run_first + count)
                if lo < hi:
                    host = self._offset(self.data_start + data_index +
                                        lo - run_first) | QCOW_OFLAG_COPIED
                    entries = range(host, host + (hi - lo) * self.cluster_size,
                                    self.cluster_size)
                    table[(lo - first) * 8:(hi - first) * 8] = struct.pack(
                        '>%dQ' % (hi - lo), *entries)
                run += 1
            yield bytes(table)

    def reads(self):
        """The allocated clusters' runs, the last cut at the disk's end."""
        for first, count, _ in self._runs:
            offset = self._offset(first)
            yield (offset, min(count * self.cluster_size,
                               self.virtual_size - offset))

    def _data(self):
        """The allocated clusters, read whole, the last one zero-padded."""
        for offset, length in self.reads():
            yield (offset, length)
            padding = -(offset + length) % self.cluster_size
            if padding:
                yield bytes(padding)

    def segments(self):
        yield self.header()
        yield from self._refcount_table()
        yield from self._refcount_blocks()
        yield from self._l1_table()
        yield from self._l2_tables()
        yield from self._data()


def _pack_entries(entries, cluster_size):
    """Big-endian 64-bit ``entries``, zero-padded to one cluster."""
    packed = struct.pack('>%dQ' % len(entries), *entries)
    return packed + bytes(cluster_size - len(packed))


def qcow2_layout(virtual_size, extents, cluster_size=65536):
    """A qcow2 image of the disk described by ``extents``."""
    return Qcow2Layout(virtual_size, extents, cluster_size)


class StreamReader(object):
    """The image as a read-only file, read once from start to end.

    ``pread(offset, length)`` returns ``length`` bytes of the disk at
    ``offset``; it is called only for ranges the layout reads, at most
    ``max_read`` bytes at a time, in stream order.  ``read()`` returns at
    most ``max_read`` bytes and ``b''`` at the end; fewer is not the end:
    a read ends where the disk's data begins or a range of it ends, and
    hands on a piece of the disk as ``pread`` returned it, never joined
    to other bytes.  ``size`` is the total.

    Seeking: ``seek(0)`` restarts from the first byte (an upload retry
    reads the image again, calling ``pread`` again); ``seek(0, 2)`` and
    ``tell()`` give the size, and seeking back to the position read so far
    resumes, which is how requests measures a body.  Any other seek raises
    ``io.UnsupportedOperation``.
    """

    def __init__(self, layout, pread, max_read=MAX_READ):
        if max_read < 1:
            raise ValueError('max_read must be at least 1, not %r'
                             % max_read)
        self.layout = layout
        self.size = layout.size
        self._pread = pread
        self._max_read = max_read
        self.closed = False
        self.seek(0)

    def readable(self):
        return True

    def seekable(self):
        # seek() rewinds and measures; arbitrary offsets raise.
        return True

    def tell(self):
        return self.size if self._parked_at_end else self._position

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence == io.SEEK_END:
            offset += self.size
        elif whence != io.SEEK_SET:
            raise ValueError('invalid whence %r' % whence)
        if offset == 0:
            self._segments = iter(self.layout.segments())
            self._segment = None
            self._done = 0
            self._position = 0
            self._parked_at_end = False
            self._failed = None
        elif self._failed is not None:
            raise io.UnsupportedOperation(
                'the image stream only rewinds to 0 after a failed read')
        elif offset == self._position:
            self._parked_at_end = False
        elif offset == self.size:
            self._parked_at_end = True
        else:
            raise io.UnsupportedOperation(
                'the image stream only rewinds to 0, goes to its end (%d) '
                'or back to where it was read to (%d), not to %d'
                % (self.size, self._position, offset))
        return offset

    def read(self, size=-1):
        if self.closed:
            raise ValueError('read from a closed image stream')
        if size is None or size < 0 or size > self._max_read:
            size = self._max_read
        if self._failed is not None:
            # The pieces gathered before the failure are gone: going on
            # would skip them.  Only a rewind (seek(0)) reads again.
            raise IOError('the image stream failed at %d (%s); it must be '
                          'read again from 0' % (self._position,
                                                 self._failed))
        if self._parked_at_end or size == 0:
            return b''
        pieces = []
        wanted = size
        try:
            while wanted:
                # Disk data is handed on alone, as it was read: never
                # joined to the bytes before or after it (a copy).
                found = self._next_piece(wanted, literal_only=bool(pieces))
                if found is None:
                    break
                piece, from_disk = found
                pieces.append(piece)
                wanted -= len(piece)
                if from_disk:
                    break
        except Exception as e:
            self._failed = e
            raise
        if len(pieces) == 1:
            data = pieces[0]
            if not isinstance(data, bytes):
                data = bytes(data)
        else:
            data = b''.join(pieces)
        self._position += len(data)
        if self._position > self.size or (
                not data and self._position < self.size):
            # A bug in the layout: the upload must not go on.
            raise RuntimeError(
                'the %s image stream does not have the %d bytes laid out: '
                '%s at %d' % (self.layout.disk_format, self.size,
                              'more' if data else 'it ends', self._position))
        return data

    def _next_piece(self, wanted, literal_only=False):
        """``(data, from_disk)`` of the current segment, or None.

        At most ``wanted`` bytes; None at the end, or at disk data if
        ``literal_only``.  Never an empty piece: empty segments are
        skipped.
        """
        while True:
            if self._segment is None:
                self._segment = next(self._segments, None)
                self._done = 0
                if self._segment is None:
                    return None
            segment = self._segment
            from_disk = isinstance(segment, tuple)
            if from_disk and literal_only:
                return None
            if from_disk:
                offset, length = segment
                count = min(wanted, length - self._done)
                if count > 0:
                    data = self._pread(offset + self._done, count)
                    if len(data) != count:
                        raise IOError(
                            'reading the disk at %d: %d bytes asked, %d '
                            'returned' % (offset + self._done, count,
                                          len(data)))
            else:
                count = min(wanted, len(segment) - self._done)
                if count == len(segment):
                    data = segment
                else:
                    data = memoryview(segment)[self._done:self._done + count]
            if count <= 0:
                self._segment = None
                continue
            self._done += count
            return data, from_disk

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
