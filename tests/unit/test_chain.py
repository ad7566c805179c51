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

"""chain: the disk's header read in Python, and the chain named in full.

The images are real: made by the real ``qemu-img create`` in tmp, as nova
and QEMU make them, then (where qemu-img cannot make the header a test
needs) one field rewritten with ``struct``, as a guest that escaped into
its QEMU process could rewrite it.
"""

import os
import struct

from nova_snapdriver import chain
from nova_snapdriver import exception
from tests.unit import base

MiB = base.MiB


def rewrite(path, offset, fmt, *values):
    """Overwrite ``struct.pack(fmt, *values)`` at ``offset`` of ``path``."""
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def extension_offset(path, ext_type):
    """Where the header extension ``ext_type`` of a qcow2 v3 image starts."""
    with open(path, 'rb') as f:
        data = f.read(65536)
    offset = struct.unpack_from('>I', data, 100)[0]
    while True:
        found, length = struct.unpack_from('>II', data, offset)
        if found == ext_type:
            return offset
        if found == chain.EXT_END:
            raise AssertionError('no extension %x in %s' % (ext_type, path))
        offset += 8 + (length + 7) // 8 * 8


def drop_backing_format(path):
    """The header as nova wrote it before it passed backing_fmt.

    The backing format extension becomes the end of the extensions.
    """
    rewrite(path, extension_offset(path, chain.EXT_BACKING_FORMAT), '>I',
            chain.EXT_END)


class ChainTestCase(base.TestCase):

    def setUp(self):
        super(ChainTestCase, self).setUp()
        self.disk, self.base = self.make_disk()
        self.cache = os.path.dirname(self.base)
        self.outside = base.make_raw(
            os.path.join(self.tmp, 'outside', 'secret'), b'host secret')

    def _disk(self, backing, backing_fmt='raw', **kw):
        """The instance's disk, its header naming ``backing``."""
        os.unlink(self.disk)
        return base.make_image(self.disk, backing=backing,
                               backing_fmt=backing_fmt, **kw)

    def _refused(self, reason, named=None, fmt='qcow2'):
        """disk_chain refuses the disk: ``reason``, naming ``named``."""
        exc = self.assertRaises(exception.UnsafeDiskChain,
                                chain.disk_chain, self.disk, fmt)
        self.assertIn(reason, str(exc))
        self.assertIn('Refusing to read %s for the snapshot'
                      % (named or self.disk), str(exc))
        return exc


class AcceptedChainTestCase(ChainTestCase):

    def test_raw_disk_is_itself_and_nothing_is_read(self):
        os.unlink(self.disk)
        # Whatever a raw disk holds, it is read as raw: never parsed.
        base.make_image(self.disk, backing=self.outside, backing_fmt='raw')

        self.assertEqual(chain.Node(self.disk, 'raw'),
                         chain.disk_chain(self.disk, 'raw'))

    def test_qcow2_without_backing_file(self):
        os.unlink(self.disk)
        base.make_image(self.disk)

        self.assertEqual(chain.Node(self.disk, 'qcow2'),
                         chain.disk_chain(self.disk, 'qcow2'))

    def test_qcow2_over_a_raw_base_in_the_image_cache(self):
        self.assertEqual(
            chain.Node(self.disk, 'qcow2', chain.Node(self.base, 'raw')),
            chain.disk_chain(self.disk, 'qcow2'))

    def test_qcow2_v2_header_over_a_raw_base(self):
        self._disk(self.base, options='compat=0.10')

        self.assertEqual(
            chain.Node(self.disk, 'qcow2', chain.Node(self.base, 'raw')),
            chain.disk_chain(self.disk, 'qcow2'))

    def test_qcow2_over_a_flat_qcow2_base(self):
        os.unlink(self.base)
        base.make_image(self.base)
        self._disk(self.base, 'qcow2')

        self.assertEqual(
            chain.Node(self.disk, 'qcow2', chain.Node(self.base, 'qcow2')),
            chain.disk_chain(self.disk, 'qcow2'))

    def test_relative_backing_name_resolves_into_the_cache(self):
        self._disk('../_base/%s' % base.BASE_NAME)

        node = chain.disk_chain(self.disk, 'qcow2')

        # Named by its full path, as qemu-img resolves it: from the disk's
        # directory.
        self.assertEqual(chain.Node(self.base, 'raw'), node.backing)

    def test_missing_backing_format_is_raw_for_a_raw_base(self):
        drop_backing_format(self.disk)
        self.assertIsNone(chain.read_header(self.disk).backing_format)

        self.assertEqual(
            chain.Node(self.disk, 'qcow2', chain.Node(self.base, 'raw')),
            chain.disk_chain(self.disk, 'qcow2'))

    def test_missing_backing_format_is_qcow2_for_a_qcow2_base(self):
        os.unlink(self.base)
        base.make_image(self.base)
        self._disk(self.base, 'qcow2')
        drop_backing_format(self.disk)

        self.assertEqual(
            chain.Node(self.disk, 'qcow2', chain.Node(self.base, 'qcow2')),
            chain.disk_chain(self.disk, 'qcow2'))

    def test_missing_backing_format_of_a_v2_header(self):
        # compat=0.10 as old nova made them; v2 headers have extensions
        # too, and their first one is the backing format.
        self._disk(self.base, options='compat=0.10')
        rewrite(self.disk, 72, '>I', chain.EXT_END)
        self.assertEqual((2, None), (
            chain.read_header(self.disk).version,
            chain.read_header(self.disk).backing_format))

        self.assertEqual(chain.Node(self.base, 'raw'),
                         chain.disk_chain(self.disk, 'qcow2').backing)

    def test_sniffed_qcow2_base_must_still_be_flat(self):
        os.unlink(self.base)
        base.make_image(self.base, backing=self.outside, backing_fmt='raw')
        self._disk(self.base, 'qcow2')
        drop_backing_format(self.disk)

        self._refused('the backing file names a backing file (%s)'
                      % self.outside, named=self.base)

    def test_non_default_image_cache_and_instances_path(self):
        instances = os.path.join(self.tmp, 'srv', 'nova')
        self.flags(instances_path=instances)
        self.flags(subdirectory_name='cache', group='image_cache')
        cached = base.make_raw(os.path.join(instances, 'cache', 'abc'))
        disk = base.make_image(os.path.join(instances, 'i', 'disk'),
                               backing=cached, backing_fmt='raw')

        self.assertEqual(os.path.join(instances, 'cache'),
                         chain.image_cache_dir())
        self.assertEqual(
            chain.Node(disk, 'qcow2', chain.Node(cached, 'raw')),
            chain.disk_chain(disk, 'qcow2'))
        # _base is not the image cache there.
        self.flags(instances_path=self.instances_path)
        self._refused("is not a file in nova's image cache %s"
                      % os.path.join(self.instances_path, 'cache'))

    def test_instances_path_reached_through_a_symlink(self):
        # A common way to put instances_path on a bigger filesystem; nova
        # writes the backing name from instances_path as configured.
        real = os.path.join(self.tmp, 'real')
        os.rename(self.instances_path, real)
        os.symlink(real, self.instances_path)

        node = chain.disk_chain(self.disk, 'qcow2')

        self.assertEqual('raw', node.backing.format)


class RefusedChainTestCase(ChainTestCase):

    def test_backing_file_outside_the_cache(self):
        self._disk(self.outside)

        self._refused("its backing file %s is not a file in nova's image "
                      'cache %s' % (self.outside, self.cache))

    def test_backing_file_in_a_directory_under_the_cache(self):
        nested = base.make_raw(os.path.join(self.cache, 'sub', 'x'))
        self._disk(nested)

        self._refused("its backing file %s is not a file in nova's image "
                      'cache' % nested)

    def test_dot_dot_escaping_the_cache(self):
        name = '../_base/../../outside/secret'
        self._disk(name)

        self._refused("its backing file %s is not a file in nova's image "
                      'cache' % name)

    def test_absolute_name_through_the_cache_with_dot_dot(self):
        name = os.path.join(self.cache, '..', '..', 'outside', 'secret')
        self._disk(name)

        self._refused("its backing file %s is not a file in nova's image "
                      'cache' % name)

    def test_symlink_in_the_cache_pointing_elsewhere(self):
        link = os.path.join(self.cache, 'innocent')
        os.symlink(self.outside, link)
        self._disk(link)

        self._refused("its backing file %s is not a file in nova's image "
                      'cache' % link)

    def test_json_backing_name(self):
        name = ('json:{"driver": "raw", "file": {"driver": "file", '
                '"filename": "%s"}}' % self.outside)
        self._disk(name)

        self._refused('its backing file %r is a protocol or json: name, '
                      'not a file nova made' % name)

    def test_protocol_backing_name(self):
        self._disk('nbd:localhost:10809')

        self._refused("its backing file 'nbd:localhost:10809' is a "
                      'protocol or json: name')

    def test_missing_base(self):
        os.unlink(self.base)

        self._refused('its backing file %s is missing or not a regular '
                      'file' % self.base)

    def test_base_that_is_a_directory(self):
        os.unlink(self.base)
        os.mkdir(self.base)

        self._refused('its backing file %s is missing or not a regular '
                      'file' % self.base)

    def test_backing_format_other_than_raw_or_qcow2(self):
        self._disk(self.base, 'vmdk')

        self._refused("its backing file format is 'vmdk'")

    def test_data_file(self):
        os.unlink(self.disk)
        data = os.path.join(self.tmp, 'outside', 'data')
        base.make_image(self.disk, options='data_file=%s' % data)

        self._refused('its header names an external data file')

    def test_data_file_extension_without_the_feature_bit(self):
        os.unlink(self.disk)
        base.make_image(self.disk, options='data_file=%s' % self.outside)
        rewrite(self.disk, 72, '>Q', 0)  # incompatible features: none

        self._refused('its header names an external data file')

    def test_data_file_feature_bit_without_the_extension(self):
        os.unlink(self.disk)
        base.make_image(self.disk)
        rewrite(self.disk, 72, '>Q', chain.INCOMPAT_DATA_FILE)

        self._refused('its header names an external data file')

    def test_luks_encrypted_disk(self):
        os.unlink(self.disk)
        # encrypt.iter-time: the key slot derived in 10 ms of CPU, not
        # qemu-img's 2 s (a 5 s create idle, 15 s on a busy host); the
        # qcow2 header is the same.  make_image retries qemu-img's bogus
        # 'Unable to get accurate CPU usage' (base.PBKDF_BENCHMARK_BUG).
        base.make_image(self.disk, options='encrypt.format=luks,'
                        'encrypt.key-secret=s0,encrypt.iter-time=10',
                        args=['--object', 'secret,id=s0,data=pass'])

        self._refused('it is a qcow2-encrypted disk')

    def test_aes_encrypted_disk(self):
        rewrite(self.disk, 32, '>I', 1)  # crypt_method: AES

        self._refused('it is a qcow2-encrypted disk')

    def test_qcow2_base_with_a_backing_file_of_its_own(self):
        os.unlink(self.base)
        base.make_image(self.base, backing=self.outside, backing_fmt='raw')
        self._disk(self.base, 'qcow2')

        # The base is named: it is the file to inspect.
        self._refused('the backing file names a backing file (%s)'
                      % self.outside, named=self.base)

    def test_qcow2_base_with_a_data_file(self):
        os.unlink(self.base)
        base.make_image(self.base, options='data_file=%s' % self.outside)
        self._disk(self.base, 'qcow2')

        self._refused('the backing file names an external data file',
                      named=self.base)

    def test_encrypted_qcow2_base(self):
        os.unlink(self.base)
        base.make_image(self.base)
        rewrite(self.base, 32, '>I', 2)  # crypt_method: LUKS
        self._disk(self.base, 'qcow2')

        self._refused('the backing file is encrypted', named=self.base)

    def test_raw_content_claimed_as_a_qcow2_base(self):
        self._disk(self.base, 'qcow2')

        self._refused('not a qcow2 image', named=self.base)

    def test_garbage_header(self):
        with open(self.disk, 'wb') as f:
            f.write(os.urandom(4096))

        self._refused('not a qcow2 image')

    def test_empty_file(self):
        open(self.disk, 'wb').close()

        self._refused('not a qcow2 image')

    def test_header_truncated_before_its_v2_fields_end(self):
        os.truncate(self.disk, 71)

        self._refused('not a qcow2 image')

    def test_v3_header_truncated(self):
        os.truncate(self.disk, 90)

        self._refused('truncated qcow2 v3 header')

    def test_version_1(self):
        rewrite(self.disk, 4, '>I', 1)

        self._refused('qcow2 version 1')

    def test_version_4(self):
        rewrite(self.disk, 4, '>I', 4)

        self._refused('qcow2 version 4')

    def test_header_extensions_beyond_the_first_cluster(self):
        rewrite(self.disk, 100, '>I', chain.HEADER_READ)

        self._refused('header extensions past the first cluster')

    def test_backing_name_too_long(self):
        rewrite(self.disk, 16, '>I', 1024)

        self._refused('a malformed backing file name')

    def test_backing_name_past_the_end_of_the_file(self):
        rewrite(self.disk, 8, '>Q', os.path.getsize(self.disk) - 2)

        self._refused('a malformed backing file name')

    def test_backing_name_not_utf8(self):
        with open(self.disk, 'rb') as f:
            offset = struct.unpack('>Q', f.read(16)[8:])[0]
        rewrite(self.disk, offset, '>B', 0xff)

        self._refused('a backing file name that is not UTF-8')

    def test_missing_disk(self):
        os.unlink(self.disk)

        self._refused('cannot read its header')

    def test_other_disk_format(self):
        self._refused("format 'vmdk' is not handled", fmt='vmdk')


class NodeTestCase(base.TestCase):

    def test_qcow2_over_raw_names_every_node_and_ends_in_raw(self):
        node = chain.Node('/i/disk', 'qcow2', chain.Node('/c/base', 'raw'))

        self.assertEqual(
            'json:{"backing": {"driver": "raw", "file": {"driver": "file", '
            '"filename": "/c/base"}}, "driver": "qcow2", "file": {"driver": '
            '"file", "filename": "/i/disk"}}', node.filename())

    def test_qcow2_chain_ends_in_backing_null(self):
        node = chain.Node('/i/disk', 'qcow2', chain.Node('/c/base', 'qcow2'))

        self.assertEqual(
            'json:{"backing": {"backing": null, "driver": "qcow2", "file": '
            '{"driver": "file", "filename": "/c/base"}}, "driver": "qcow2", '
            '"file": {"driver": "file", "filename": "/i/disk"}}',
            node.filename())

    def test_unbacked_qcow2_has_backing_null(self):
        self.assertEqual(
            'json:{"backing": null, "driver": "qcow2", "file": {"driver": '
            '"file", "filename": "/w/backup.qcow2"}}',
            chain.Node('/w/backup.qcow2', 'qcow2').filename())

    def test_raw_takes_no_backing_option(self):
        self.assertEqual(
            'json:{"driver": "raw", "file": {"driver": "file", "filename": '
            '"/i/disk"}}', chain.Node('/i/disk', 'raw').filename())

    def test_top_is_the_image_alone_its_backing_disabled(self):
        node = chain.Node('/i/disk', 'qcow2', chain.Node('/c/base', 'raw'))

        self.assertEqual(chain.Node('/i/disk', 'qcow2'), node.top())
        self.assertIn('"backing": null', node.top().filename())

    def test_a_path_with_quotes_stays_one_filename(self):
        node = chain.Node('/i/a "quoted", name', 'raw')

        self.assertIn(r'"filename": "/i/a \"quoted\", name"',
                      node.filename())


class CapturedTestCase(base.TestCase):
    """What QEMU wrote (overlay, backup) is checked like a disk."""

    def setUp(self):
        super(CapturedTestCase, self).setUp()
        self.base = chain.Node(
            base.make_raw(os.path.join(self.tmp, '_base', 'b')), 'raw')
        self.overlay = os.path.join(self.tmp, 'work', 'overlay.qcow2')

    def test_overlay_with_the_expected_backing_file(self):
        base.make_image(self.overlay, backing=self.base.path,
                        backing_fmt='raw')

        self.assertEqual(chain.Node(self.overlay, 'qcow2', self.base),
                         chain.captured(self.overlay, 'qcow2', self.base))

    def test_overlay_naming_another_backing_file(self):
        other = os.path.join(self.tmp, 'secret')
        base.make_image(self.overlay, backing=other, backing_fmt='raw')

        exc = self.assertRaises(exception.UnsafeDiskChain, chain.captured,
                                self.overlay, 'qcow2', self.base)

        self.assertIn('its header names the backing file %r, not %r it was '
                      'created with' % (other, self.base.path), str(exc))

    def test_backup_that_names_a_backing_file(self):
        base.make_image(self.overlay, backing=self.base.path,
                        backing_fmt='raw')

        exc = self.assertRaises(exception.UnsafeDiskChain, chain.captured,
                                self.overlay, 'qcow2')

        self.assertIn('not None it was created with', str(exc))

    def test_unbacked_backup(self):
        base.make_image(self.overlay)

        self.assertEqual(chain.Node(self.overlay, 'qcow2'),
                         chain.captured(self.overlay, 'qcow2'))

    def test_overlay_with_a_data_file(self):
        base.make_image(self.overlay, backing=self.base.path,
                        backing_fmt='raw',
                        options='data_file=%s' % self.base.path)

        exc = self.assertRaises(exception.UnsafeDiskChain, chain.captured,
                                self.overlay, 'qcow2', self.base)

        self.assertIn('external data file or encryption the driver never '
                      'asked for', str(exc))

    def test_garbled_overlay(self):
        base.make_raw(self.overlay, b'not qcow2')

        exc = self.assertRaises(exception.UnsafeDiskChain, chain.captured,
                                self.overlay, 'qcow2', self.base)

        self.assertIn('not a qcow2 image', str(exc))

    def test_raw_backup_is_read_as_raw(self):
        base.make_raw(self.overlay, b'QFI\xfb but raw')

        self.assertEqual(chain.Node(self.overlay, 'raw'),
                         chain.captured(self.overlay, 'raw'))
