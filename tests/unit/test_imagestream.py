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

"""imagestream: the streamed image, checked by the real qemu-img.

Each test lays out an image from an allocation map, streams it into a file
through ``StreamReader`` and has the real ``qemu-img`` judge the file:
``qemu-img check`` finds a qcow2 clean (no corruptions, no leaks, the end
where the layout said), and ``qemu-img compare`` finds it equal to a
reference: a sparse raw file made from the same map and data with
``os.truncate`` and writes at the data extents.  A raw stream must equal
the reference byte for byte.

The disk is a ``Disk``: pseudo-random bytes that depend on the offset (the
pattern's period is not a multiple of 512, so a cluster in the wrong place
shows), zeros in the holes (as NBD reads them), and zeros in some data
ranges too (allocated clusters that hold zeros).
"""

import bisect
import filecmp
import io
import json
import os
import random
import struct
import subprocess
import tempfile
import tracemalloc

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from oslo_utils.imageutils import format_inspector
import pytest

from nova_snapdriver import imagestream
from nova_snapdriver import readahead

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
CLUSTER = 64 * KiB

# The pattern repeats every _PERIOD bytes: longer than any read, and not a
# multiple of 512.
_PERIOD = MiB + 4099
_PATTERN = random.Random(13).randbytes(_PERIOD)
_PATTERN2 = _PATTERN + _PATTERN


class Disk(object):
    """A disk with data at ``extents`` and zeros elsewhere.

    ``extents``: the allocation map, ``(offset, length, data)``.
    ``zero_ranges``: ``(offset, length)`` ranges within data extents that
    hold zeros all the same.  ``preads`` lists the calls.
    """

    def __init__(self, virtual_size, extents, zero_ranges=()):
        self.virtual_size = virtual_size
        self.extents = [imagestream.Extent(*e) for e in extents]
        zeros = [(e.offset, e.offset + e.length)
                 for e in self.extents if not e.data]
        zeros += [(o, o + n) for o, n in zero_ranges]
        self._zeros = sorted(zeros)
        self._zero_starts = [z[0] for z in self._zeros]
        self.preads = []

    def pread(self, offset, length):
        assert 0 < length <= imagestream.MAX_READ
        assert 0 <= offset and offset + length <= self.virtual_size, (
            offset, length)
        self.preads.append((offset, length))
        start = offset % _PERIOD
        data = _PATTERN2[start:start + length]
        end = offset + length
        i = max(0, bisect.bisect_right(self._zero_starts, offset) - 1)
        if i < len(self._zeros) and self._zeros[i][0] < end:
            data = bytearray(data)
            while i < len(self._zeros) and self._zeros[i][0] < end:
                lo = max(offset, self._zeros[i][0])
                hi = min(end, self._zeros[i][1])
                if lo < hi:
                    data[lo - offset:hi - offset] = bytes(hi - lo)
                i += 1
            data = bytes(data)
        return data

    def write_reference(self, path):
        """The disk as a sparse raw file: truncated, data extents written."""
        with open(path, 'wb') as f:
            os.truncate(f.fileno(), self.virtual_size)
            for extent in self.extents:
                if not extent.data:
                    continue
                for offset in range(extent.offset,
                                    extent.offset + extent.length, MiB):
                    length = min(MiB, extent.offset + extent.length - offset)
                    f.seek(offset)
                    f.write(self.pread(offset, length))
        self.preads = []
        return path


def stream_to_file(layout, disk, path, read_size=-1,
                   max_read=imagestream.MAX_READ):
    """Stream ``layout`` into ``path``; check sizes and read bounds."""
    reader = imagestream.StreamReader(layout, disk.pread, max_read=max_read)
    assert reader.size == layout.size
    written = 0
    with open(path, 'wb') as f:
        while True:
            chunk = reader.read(read_size)
            assert isinstance(chunk, bytes)
            assert len(chunk) <= max_read
            if read_size is not None and read_size >= 0:
                assert len(chunk) <= read_size
            if not chunk:
                break
            f.write(chunk)
            written += len(chunk)
            assert reader.tell() == written
    assert written == layout.size
    assert os.path.getsize(path) == layout.size
    assert reader.read() == b''
    return path


def qemu_img(*args):
    return subprocess.run(('qemu-img',) + args, capture_output=True,
                          text=True)


def check_qcow2(path, layout):
    """``qemu-img check`` finds the image clean and as laid out."""
    result = qemu_img('check', '-f', 'qcow2', '--output=json', path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for problem in ('corruptions', 'leaks', 'check-errors',
                    'corruptions-fixed', 'leaks-fixed'):
        assert report.get(problem, 0) == 0, report
    assert report['image-end-offset'] == layout.size, report
    # Every cluster of the file holds data or metadata: nothing is wasted.
    assert report.get('allocated-clusters', 0) == layout.data_clusters, (
        report)
    info = json.loads(qemu_img('info', '--output=json', '-f', 'qcow2',
                               path).stdout)
    assert info['virtual-size'] == -(-layout.virtual_size // 512) * 512
    assert info['format-specific']['data']['compat'] == '1.1'
    assert info['format-specific']['data']['refcount-bits'] == 16
    assert 'backing-filename' not in info


def compare(reference, path, fmt):
    """``qemu-img compare`` finds ``path`` equal to the raw reference."""
    result = qemu_img('compare', '-f', 'raw', '-F', fmt, reference, path)
    assert result.returncode == 0, result.stdout + result.stderr


def check_stream(tmp_dir, virtual_size, extents, zero_ranges=(),
                 formats=('raw', 'qcow2'), cluster_size=CLUSTER):
    """Stream the disk in each format and have qemu-img judge it."""
    disk = Disk(virtual_size, extents, zero_ranges)
    reference = disk.write_reference(os.path.join(tmp_dir, 'reference'))
    layouts = {}
    for fmt in formats:
        if fmt == 'raw':
            layout = imagestream.raw_layout(virtual_size, disk.extents)
        else:
            layout = imagestream.qcow2_layout(virtual_size, disk.extents,
                                              cluster_size)
        assert layout.disk_format == fmt
        path = stream_to_file(layout, disk,
                              os.path.join(tmp_dir, 'image.' + fmt))
        assert sum(n for _, n in disk.preads) == layout.guest_bytes
        check_no_hole_read(disk, layout)
        disk.preads = []
        if fmt == 'raw':
            assert layout.size == virtual_size
            assert filecmp.cmp(reference, path, shallow=False)
        else:
            check_qcow2(path, layout)
            compare(reference, path, fmt)
        layouts[fmt] = layout
    return layouts


def check_no_hole_read(disk, layout):
    """Reads stay in data extents (raw) or allocated clusters (qcow2)."""
    unit = 1 if layout.disk_format == 'raw' else layout.cluster_size
    allowed = []
    for e in disk.extents:
        if not e.data:
            continue
        lo = e.offset // unit * unit
        hi = min(-(-(e.offset + e.length) // unit) * unit, disk.virtual_size)
        if allowed and lo <= allowed[-1][1]:
            allowed[-1][1] = max(allowed[-1][1], hi)
        else:
            allowed.append([lo, hi])
    starts = [a[0] for a in allowed]
    for offset, length in disk.preads:
        i = bisect.bisect_right(starts, offset) - 1
        assert i >= 0 and offset + length <= allowed[i][1], (offset, length)


def extents_from(virtual_size, data_ranges):
    """The full map of a disk whose data is ``data_ranges`` (sorted)."""
    extents = []
    end = 0
    for offset, length in data_ranges:
        if offset > end:
            extents.append((end, offset - end, False))
        extents.append((offset, length, True))
        end = offset + length
    if end < virtual_size:
        extents.append((end, virtual_size - end, False))
    return extents


# Images checked by qemu-img.

def test_empty_disk(tmp_path):
    layouts = check_stream(str(tmp_path), 10 * MiB,
                           [(0, 10 * MiB, False)])
    qcow2 = layouts['qcow2']
    # Header, refcount table, one refcount block, L1: no L2, no data.
    assert qcow2.size == 4 * CLUSTER
    assert qcow2.guest_bytes == 0


def test_zero_size_disk(tmp_path):
    layouts = check_stream(str(tmp_path), 0, [])
    assert layouts['raw'].size == 0
    # Header, refcount table and block; an L1 table of no entries.
    assert layouts['qcow2'].size == 3 * CLUSTER


def test_one_byte_disk(tmp_path):
    check_stream(str(tmp_path), 1, [(0, 1, True)])


def test_full_disk(tmp_path):
    size = 6 * MiB
    layouts = check_stream(str(tmp_path), size, [(0, size, True)])
    assert layouts['qcow2'].size == (5 + size // CLUSTER) * CLUSTER


def test_sparse_disk(tmp_path):
    size = 64 * MiB
    check_stream(str(tmp_path), size, extents_from(size, [
        (0, 4096), (CLUSTER - 512, 1024), (3 * CLUSTER, 5 * CLUSTER),
        (MiB + 17, 100000), (20 * MiB, 3 * MiB), (size - 512, 512)]))


def test_data_clusters_that_hold_zeros(tmp_path):
    size = 8 * MiB
    check_stream(str(tmp_path), size, extents_from(size, [(0, 4 * MiB)]),
                 zero_ranges=[(0, CLUSTER), (CLUSTER * 5 + 3, 3 * CLUSTER),
                              (4 * MiB - 100, 100)])


def test_odd_size_with_data_in_the_last_partial_cluster(tmp_path):
    size = 3 * CLUSTER + 12345     # not a multiple of 512
    layouts = check_stream(str(tmp_path), size, extents_from(size, [
        (100, 50), (3 * CLUSTER + 12000, 345)]))
    qcow2 = layouts['qcow2']
    assert qcow2.data_clusters == 2
    assert qcow2.guest_bytes == CLUSTER + 12345


def test_odd_size_full(tmp_path):
    size = 5 * MiB + 1234567 % 511
    check_stream(str(tmp_path), size, [(0, size, True)])


def test_odd_size_with_data_in_the_last_bytes(tmp_path):
    # The last bytes are past the last multiple of 512: QEMU sees them
    # only because the header's size is rounded up.
    size = 2 * MiB + 3
    check_stream(str(tmp_path), size, extents_from(size, [(size - 3, 3)]))


def test_larger_than_one_l2_table_covers(tmp_path):
    # One L2 table covers 512 MiB at 64 KiB clusters.
    size = 1536 * MiB + 7 * 512
    boundary = 512 * MiB
    layouts = check_stream(str(tmp_path), size, extents_from(size, [
        (0, CLUSTER), (boundary - 3 * CLUSTER, 6 * CLUSTER),
        (2 * boundary + 5, 1000), (size - 2000, 2000)]), formats=('qcow2',))
    qcow2 = layouts['qcow2']
    assert qcow2.l1_size == 4
    # L2 tables for the four 512 MiB ranges: all hold data.
    assert qcow2.data_start - qcow2.l2_start == 4


def test_l2_table_only_where_there_is_data(tmp_path):
    size = 2 * GiB
    layouts = check_stream(str(tmp_path), size, extents_from(size, [
        (1536 * MiB + CLUSTER, CLUSTER)]), formats=('qcow2',))
    qcow2 = layouts['qcow2']
    assert qcow2.l1_size == 4
    assert qcow2.data_start - qcow2.l2_start == 1
    assert qcow2.size == 6 * CLUSTER


def test_huge_sparse_disk_gives_a_small_stream(tmp_path):
    size = 4 * TiB
    data = [(0, MiB), (GiB + 12345, 300000), (2 * TiB - CLUSTER, 2 * CLUSTER),
            (size - MiB, MiB)]
    layouts = check_stream(str(tmp_path), size, extents_from(size, data),
                           formats=('qcow2',))
    qcow2 = layouts['qcow2']
    assert qcow2.l1_size == 8192
    assert qcow2.size < 4 * MiB


def test_more_clusters_than_one_refcount_block_counts(tmp_path):
    """A file of > 32768 clusters: more than one refcount block.

    Over 2 GiB of data, read cheaply from the repeating pattern.
    """
    size = 2 * GiB + 5 * MiB + 512
    data = [(0, GiB), (GiB + 3 * MiB, size - GiB - 3 * MiB)]
    layouts = check_stream(str(tmp_path), size, extents_from(size, data),
                           formats=('qcow2',))
    qcow2 = layouts['qcow2']
    assert qcow2.total_clusters > 32768
    assert qcow2.refblocks == 2


def test_small_clusters_several_refcount_table_and_l1_clusters(tmp_path):
    # At 512-byte clusters a refcount block counts 256 clusters, a refcount
    # table cluster points to 64 blocks (16384 clusters, 8 MiB) and an L1
    # table cluster to 64 L2 tables (4096 clusters, 2 MiB).
    size = 12 * MiB + 1
    layouts = check_stream(str(tmp_path), size, extents_from(size, [
        (0, size - 1537), (size - 1, 1)]),
        formats=('qcow2',), cluster_size=512)
    qcow2 = layouts['qcow2']
    assert qcow2.refcount_table_clusters == 2
    assert qcow2.l1_clusters == 7


def test_4k_clusters_several_refcount_blocks_and_l1_clusters(tmp_path):
    # At 4 KiB a refcount block counts 2048 clusters (8 MiB) and an L1
    # table cluster covers 1 GiB.
    size = 3 * GiB - 4096
    layouts = check_stream(str(tmp_path), size, extents_from(size, [
        (0, 20 * MiB), (GiB - 10 * MiB, 20 * MiB), (size - 4097, 4097)]),
        formats=('qcow2',), cluster_size=4096)
    qcow2 = layouts['qcow2']
    assert qcow2.refblocks == 6
    assert qcow2.l1_clusters == 3


# The header, against the specification.

def test_qcow2_header_fields():
    size = 3 * GiB + 1
    layout = imagestream.qcow2_layout(size, extents_from(size, [(GiB, 1)]))
    header = next(iter(layout.segments()))
    assert len(header) == CLUSTER
    (magic, version, backing_offset, backing_size, cluster_bits,
     virtual_size, crypt, l1_size, l1_offset, refcount_table_offset,
     refcount_table_clusters, nb_snapshots, snapshots_offset, incompatible,
     compatible, autoclear, refcount_order, header_length) = struct.unpack(
        '>4sIQIIQIIQQIIQQQQII', header[:104])
    assert (magic, version) == (b'QFI\xfb', 3)
    assert (backing_offset, backing_size, crypt) == (0, 0, 0)
    assert cluster_bits == 16
    assert virtual_size == size + 511
    assert l1_size == 7
    assert (l1_offset, refcount_table_offset) == (3 * CLUSTER, CLUSTER)
    assert refcount_table_clusters == 1
    assert (nb_snapshots, snapshots_offset) == (0, 0)
    assert (incompatible, compatible, autoclear) == (0, 0, 0)
    assert (refcount_order, header_length) == (4, 112)
    # compression_type zlib, padding, then the end of the extensions.
    assert header[104:] == bytes(CLUSTER - 104)


def test_glance_format_inspector_accepts_the_qcow2_stream():
    # Glance runs oslo.utils' inspector on the upload and, with
    # require_image_format_match, refuses what fails its safety checks.
    size = 10 * MiB + 512
    disk = Disk(size, extents_from(size, [(0, MiB), (5 * MiB, 10)]))
    layout = imagestream.qcow2_layout(size, disk.extents)
    wrapper = format_inspector.InspectWrapper(
        imagestream.StreamReader(layout, disk.pread),
        expected_format='qcow2')
    total = 0
    while True:
        chunk = wrapper.read(imagestream.MAX_READ)
        if not chunk:
            break
        total += len(chunk)
    wrapper.close()
    assert total == layout.size
    assert wrapper.format.NAME == 'qcow2'
    wrapper.format.safety_check()
    assert wrapper.format.virtual_size == size


def test_l1_and_l2_entries_have_the_copied_flag(tmp_path):
    size = 4 * MiB
    disk = Disk(size, extents_from(size, [(CLUSTER, 10)]))
    layout = imagestream.qcow2_layout(size, disk.extents)
    image = stream_to_file(layout, disk, str(tmp_path / 'image'))
    with open(image, 'rb') as f:
        data = f.read()
    l1_entry, = struct.unpack_from('>Q', data, layout.l1_start * CLUSTER)
    assert l1_entry == 1 << 63 | layout.l2_start * CLUSTER
    l2 = layout.l2_start * CLUSTER
    assert struct.unpack_from('>QQQ', data, l2) == (
        0, 1 << 63 | layout.data_start * CLUSTER, 0)


def test_layouts_refuse_a_map_that_does_not_cover_the_disk():
    for extents in ([(0, 10, True)],                      # short
                    [(0, 10, True), (20, 80, False)],     # gap
                    [(0, 60, True), (50, 50, False)],     # overlap
                    [(0, 120, True)],                     # too long
                    [(10, 90, True)]):                    # not from 0
        for make in (imagestream.raw_layout, imagestream.qcow2_layout):
            with pytest.raises(ValueError):
                make(100, extents)


def test_layouts_take_plain_tuples_empty_extents_and_iterators():
    extents = [(0, 0, True), (0, CLUSTER, 1), (CLUSTER, 0, False),
               (CLUSTER, CLUSTER, 0)]
    for as_given in (extents, iter(extents)):
        qcow2 = imagestream.qcow2_layout(2 * CLUSTER, as_given)
        assert qcow2.data_clusters == 1
    raw = imagestream.raw_layout(2 * CLUSTER, iter(extents))
    assert raw.guest_bytes == CLUSTER
    assert list(raw.segments()) == list(raw.segments()) == [
        (0, CLUSTER), bytes(CLUSTER)]


def test_a_layout_that_lies_about_its_size_stops_the_stream():
    layout = imagestream.raw_layout(MiB, [(0, MiB, False)])
    layout.size = MiB + 1
    reader = imagestream.StreamReader(layout, None)
    reader.read()
    with pytest.raises(RuntimeError):
        reader.read()
    layout.size = MiB - 1
    reader = imagestream.StreamReader(layout, None)
    with pytest.raises(RuntimeError):
        reader.read()


def test_qcow2_refuses_bad_cluster_sizes():
    for cluster_size in (256, 3 * 4096, 4 * MiB):
        with pytest.raises(ValueError):
            imagestream.qcow2_layout(MiB, [(0, MiB, True)], cluster_size)


def test_qcow2_refuses_a_disk_qemu_could_not_open():
    # An L1 table over 32 MiB: more than 2 PiB at 64 KiB clusters.
    size = 4 * 1024 * TiB
    with pytest.raises(ValueError):
        imagestream.qcow2_layout(size, [(0, size, False)])


# Memory: nothing grows with the virtual size.

def test_huge_virtual_sizes_stream_in_little_memory():
    size = 1024 * TiB      # an L1 table of 16 MiB, made a cluster at a time
    extents = extents_from(size, [(0, CLUSTER), (size // 2, 3 * CLUSTER),
                                  (size - CLUSTER, CLUSTER)])
    disk = Disk(size, extents)
    tracemalloc.start()
    try:
        layout = imagestream.qcow2_layout(size, disk.extents)
        reader = imagestream.StreamReader(layout, disk.pread)
        total = 0
        while True:
            chunk = reader.read()
            if not chunk:
                break
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == layout.size
    assert layout.size > 16 * MiB
    assert peak < 4 * MiB, peak


def test_raw_holes_are_zeros_never_read_and_never_allocated_whole():
    size = 256 * MiB
    disk = Disk(size, [(0, size, False)])
    tracemalloc.start()
    try:
        reader = imagestream.StreamReader(
            imagestream.raw_layout(size, disk.extents), disk.pread)
        total = 0
        nonzero = False
        while True:
            chunk = reader.read()
            if not chunk:
                break
            total += len(chunk)
            nonzero = nonzero or chunk.count(0) != len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and not nonzero
    assert disk.preads == []
    assert peak < 4 * MiB, peak


# The reader: bounded reads, rewinding, measuring.

def all_bytes(reader, read_size=-1):
    chunks = []
    while True:
        chunk = reader.read(read_size)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


@pytest.fixture(params=['raw', 'qcow2'])
def layout_and_disk(request):
    size = 3 * MiB + 4097
    disk = Disk(size, extents_from(size, [(5, 70000), (MiB, 2 * MiB)]))
    make = getattr(imagestream, request.param + '_layout')
    return make(size, disk.extents), disk


def test_reads_are_bounded_and_any_read_size_gives_the_same_bytes(
        layout_and_disk):
    layout, disk = layout_and_disk
    expected = all_bytes(imagestream.StreamReader(layout, disk.pread))
    assert len(expected) == layout.size
    for read_size, max_read in ((-1, 1000), (None, 4096), (10 ** 9, 65537),
                                (12345, imagestream.MAX_READ),
                                (3 * MiB, imagestream.MAX_READ)):
        reader = imagestream.StreamReader(layout, disk.pread, max_read)
        full = max_read if read_size is None or read_size < 0 else min(
            read_size, max_read)
        chunks = []
        while True:
            chunk = reader.read(read_size)
            if not chunk:
                break
            chunks.append(chunk)
        assert b''.join(chunks) == expected
        # None more than max_read; short only where disk data begins or a
        # range of it ends (at most twice per range), or at the end.
        assert all(0 < len(c) <= full for c in chunks)
        short = sum(1 for c in chunks[:-1] if len(c) < full)
        assert short <= 2 * len(list(layout.reads()))
    # Byte by byte, for a while.
    reader = imagestream.StreamReader(layout, disk.pread)
    assert b''.join(reader.read(1) for _ in range(100000)) == (
        expected[:100000])


def test_read_zero_bytes(layout_and_disk):
    layout, disk = layout_and_disk
    reader = imagestream.StreamReader(layout, disk.pread)
    assert reader.read(0) == b''
    assert reader.tell() == 0


def test_seek_0_after_a_partial_read_restarts_identically(layout_and_disk):
    layout, disk = layout_and_disk
    expected = all_bytes(imagestream.StreamReader(layout, disk.pread))
    reader = imagestream.StreamReader(layout, disk.pread)
    read = sum(len(reader.read(777777)) for _ in range(3))
    assert read > 777777
    assert reader.tell() == read
    assert reader.seek(0) == 0
    assert reader.tell() == 0
    assert all_bytes(reader, 65536) == expected
    # And after the end.
    assert reader.seek(0) == 0
    assert all_bytes(reader) == expected


def test_a_read_that_failed_part_way_is_read_again_only_from_0(
        layout_and_disk):
    """The pieces a failed read gathered are lost: it never goes on."""
    layout, disk = layout_and_disk
    expected = all_bytes(imagestream.StreamReader(layout, disk.pread))
    calls = []

    def pread_failing_on_the_second_call(offset, length):
        calls.append(offset)
        if len(calls) == 2:
            raise IOError('the export went away')
        return disk.pread(offset, length)
    reader = imagestream.StreamReader(layout, pread_failing_on_the_second_call)
    with pytest.raises(IOError, match='went away'):
        while reader.read(layout.size):
            pass
    assert len(calls) == 2, 'the layout needs two reads for this test'
    with pytest.raises(IOError, match='must be read again from 0'):
        reader.read(1)
    with pytest.raises(io.UnsupportedOperation):
        reader.seek(0, io.SEEK_END)
    assert reader.seek(0) == 0
    assert all_bytes(reader) == expected


def test_size_measured_by_seeking_to_the_end_and_back(layout_and_disk):
    # requests measures a body this way: tell, seek(0, 2), tell, seek back.
    layout, disk = layout_and_disk
    expected = all_bytes(imagestream.StreamReader(layout, disk.pread))
    reader = imagestream.StreamReader(layout, disk.pread)
    start = reader.read(1000)
    position = reader.tell()
    assert reader.seek(0, io.SEEK_END) == layout.size
    assert reader.tell() == layout.size
    assert reader.read() == b''
    assert reader.seek(position) == position
    assert start + all_bytes(reader) == expected
    assert reader.seek(0, io.SEEK_CUR) == layout.size


def test_other_seeks_are_unsupported(layout_and_disk):
    layout, disk = layout_and_disk
    reader = imagestream.StreamReader(layout, disk.pread)
    read = len(reader.read(100))
    for offset, whence in ((read - 1, io.SEEK_SET), (200, io.SEEK_SET),
                           (-1, io.SEEK_END), (1, io.SEEK_CUR)):
        with pytest.raises(io.UnsupportedOperation):
            reader.seek(offset, whence)
    assert reader.tell() == read
    assert reader.readable() and reader.seekable()


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_disk_data_is_handed_on_as_read_not_copied(fmt):
    """Each read of disk data is the object the export's pread returned.

    The tables (or zeros) before it are a read of their own, not joined
    to it, so the reads that follow line up with the read-ahead's.
    """
    size = 8 * MiB
    disk = Disk(size, extents_from(size, [(3 * MiB + 4096, 3 * MiB)]))
    layout = getattr(imagestream, fmt + '_layout')(size, disk.extents)
    returned = []

    class Export(object):
        def pread(self, offset, length):
            returned.append(disk.pread(offset, length))
            return returned[-1]
    # As a stream reads: the read-ahead splits each range from its start.
    ahead = readahead.ReadAhead(Export(), layout.reads())
    try:
        reader = imagestream.StreamReader(layout, ahead.read)
        chunks = list(iter(lambda: reader.read(MiB), b''))
    finally:
        ahead.close()
    assert b''.join(chunks) == all_bytes(
        imagestream.StreamReader(layout, disk.pread))
    handed = [c for c in chunks if any(c is r for r in returned)]
    # Three MiB (raw), or the clusters around them (qcow2): 3 or 4 reads.
    assert len(returned) in (3, 4)
    assert len(handed) == len(returned)


def test_a_short_pread_fails_the_stream():
    size = MiB
    layout = imagestream.raw_layout(size, [(0, size, True)])
    reader = imagestream.StreamReader(layout, lambda o, n: bytes(n - 1))
    with pytest.raises(IOError):
        reader.read()


def test_closed_reader_refuses_reads(layout_and_disk):
    layout, disk = layout_and_disk
    with imagestream.StreamReader(layout, disk.pread) as reader:
        reader.read(10)
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read()


# Properties: random disks and maps, judged by qemu-img.

@st.composite
def disks(draw):
    """(virtual_size, data ranges, zero ranges, cluster_size)."""
    cluster_size = draw(st.sampled_from([512, 4096, CLUSTER]))
    limit = {512: 4 * MiB, 4096: 16 * MiB, CLUSTER: 96 * MiB}[cluster_size]
    clusters = limit // cluster_size
    kind = draw(st.sampled_from(['any', 'whole clusters', 'one off']))
    if kind == 'any':
        virtual_size = draw(st.integers(0, limit))
    elif kind == 'whole clusters':
        virtual_size = draw(st.integers(0, clusters)) * cluster_size
    else:
        virtual_size = (draw(st.integers(1, clusters)) * cluster_size +
                        draw(st.sampled_from([-1, 1])))
    cuts = sorted(set(draw(st.lists(st.integers(0, virtual_size),
                                    max_size=24))) | {0, virtual_size})
    ranges = list(zip(cuts, cuts[1:]))
    flags = draw(st.lists(st.booleans(), min_size=len(ranges),
                          max_size=len(ranges)))
    data = [(lo, hi - lo) for (lo, hi), flag in zip(ranges, flags) if flag]
    zero_ranges = []
    for offset, length in data:
        if length > 1 and draw(st.integers(0, 3)) == 0:
            start = draw(st.integers(offset, offset + length - 1))
            end = draw(st.integers(start + 1, offset + length))
            zero_ranges.append((start, end - start))
    return virtual_size, data, zero_ranges, cluster_size


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(disks())
def test_random_maps_stream_images_qemu_img_accepts(disk):
    virtual_size, data, zero_ranges, cluster_size = disk
    extents = extents_from(virtual_size, data)
    # Neighbouring data extents stay separate, as NBD may report them.
    with tempfile.TemporaryDirectory() as tmp_dir:
        check_stream(tmp_dir, virtual_size, extents, zero_ranges,
                     cluster_size=cluster_size)
