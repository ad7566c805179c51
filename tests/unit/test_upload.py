"""upload: the bytes sent are hashed, and Glance's hash must agree."""

import hashlib
import io
import os
from unittest import mock

import fixtures

from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver import exception
from nova_snapdriver import progress
from nova_snapdriver import upload
from tests.unit import base

DATA = b'\x00\x01snapshot\xff' * 10000


def reader_for(data):
    reader = upload.HashingReader(io.BytesIO(data),
                                  mock.Mock(spec=['update']))
    while reader.read(4096):
        pass
    return reader


class HashingReaderTestCase(base.TestCase):

    def _read_all(self, data, how):
        meter = mock.Mock(spec=['update'])
        reader = upload.HashingReader(io.BytesIO(data), meter)
        read = how(reader)
        return reader, meter, read

    def test_read_in_chunks_hashes_and_counts_everything(self):
        def chunks(reader):
            parts = []
            while True:
                part = reader.read(1000)
                if not part:
                    return b''.join(parts)
                parts.append(part)

        reader, meter, read = self._read_all(DATA, chunks)

        self.assertEqual(DATA, read)
        self.assertEqual(len(DATA), reader.sent)
        self.assertEqual(hashlib.sha512(DATA).hexdigest(),
                         reader.sha512.hexdigest())
        self.assertEqual(hashlib.md5(DATA).hexdigest(),
                         reader.md5.hexdigest())
        # One meter update per non-empty read, with the running count.
        self.assertEqual(
            [mock.call(n) for n in range(1000, len(DATA), 1000)] +
            [mock.call(len(DATA))], meter.update.call_args_list)

    def test_read_everything_at_once_with_default_or_none_size(self):
        for how in (lambda r: r.read(), lambda r: r.read(None)):
            reader, meter, read = self._read_all(DATA, how)
            self.assertEqual(DATA, read)
            self.assertEqual(len(DATA), reader.sent)
            meter.update.assert_called_once_with(len(DATA))

    def test_iteration_yields_64k_chunks_and_hashes_them(self):
        reader, meter, read = self._read_all(DATA, list)

        self.assertEqual([64 * 1024, len(DATA) - 64 * 1024],
                         [len(chunk) for chunk in read])
        self.assertEqual(DATA, b''.join(read))
        self.assertEqual(hashlib.sha512(DATA).hexdigest(),
                         reader.sha512.hexdigest())

    def test_empty_file_hashes_nothing_and_does_not_update_meter(self):
        reader, meter, read = self._read_all(b'', list)

        self.assertEqual([], read)
        self.assertEqual(0, reader.sent)
        self.assertEqual(hashlib.sha512(b'').hexdigest(),
                         reader.sha512.hexdigest())
        meter.update.assert_not_called()


class VerifyTestCase(base.TestCase):

    def _verify(self, image, data=DATA):
        return upload.verify(base.IMAGE_ID, image, reader_for(data))

    def test_sha512_match_returns_sha512(self):
        self.assertEqual('sha512', self._verify(base.glance_image(DATA)))

    def test_hash_as_image_property_is_found_too(self):
        image = base.glance_image(DATA, checksum=None, os_hash_algo=None,
                                  os_hash_value=None, size=None)
        image['properties'] = {
            'os_hash_algo': 'sha512',
            'os_hash_value': hashlib.sha512(DATA).hexdigest()}

        self.assertEqual('sha512', self._verify(image))

    def test_sha512_mismatch_raises_with_both_hashes(self):
        image = base.glance_image(b'other bytes')

        exc = self.assertRaises(exception.UploadVerificationFailed,
                                self._verify, image)

        stored = hashlib.sha512(b'other bytes').hexdigest()
        sent = hashlib.sha512(DATA).hexdigest()
        self.assertEqual(
            ('sha512', stored, sent, base.IMAGE_ID),
            (exc.kwargs['algo'], exc.kwargs['stored'], exc.kwargs['sent'],
             exc.kwargs['image_id']))
        self.assertIn('Glance stored image %s with sha512 %s, but the bytes '
                      'sent had %s.' % (base.IMAGE_ID, stored, sent),
                      str(exc))

    def test_other_hash_algo_falls_back_to_md5_checksum(self):
        image = base.glance_image(DATA, os_hash_algo='sha256',
                                  os_hash_value=hashlib.sha256(
                                      b'not compared').hexdigest())

        self.assertEqual('md5', self._verify(image))

    def test_md5_fallback_mismatch_raises_with_md5(self):
        image = base.glance_image(DATA, os_hash_algo='sha3_512',
                                  os_hash_value='x',
                                  checksum=hashlib.md5(b'x').hexdigest())

        exc = self.assertRaises(exception.UploadVerificationFailed,
                                self._verify, image)

        self.assertEqual('md5', exc.kwargs['algo'])
        self.assertEqual(hashlib.md5(DATA).hexdigest(), exc.kwargs['sent'])

    def test_sha512_without_value_falls_back_to_md5(self):
        self.assertEqual('md5', self._verify(
            base.glance_image(DATA, os_hash_value=None)))

    def test_missing_hash_warns_and_returns_none(self):
        image = base.glance_image(DATA, checksum=None, os_hash_algo=None,
                                  os_hash_value=None)

        self.assertIsNone(self._verify(image))
        self.assertIn('WARNING Glance reported no hash for image %s; its '
                      'content could not be verified' % base.IMAGE_ID,
                      self.logs.output)

    def test_size_mismatch_with_matching_hash_raises(self):
        exc = self.assertRaises(exception.UploadVerificationFailed,
                                self._verify,
                                base.glance_image(DATA, size=len(DATA) + 1))

        self.assertEqual(('size', len(DATA) + 1, len(DATA)),
                         (exc.kwargs['algo'], exc.kwargs['stored'],
                          exc.kwargs['sent']))

    def test_size_as_string_is_compared_as_a_number(self):
        self.assertEqual('sha512', self._verify(
            base.glance_image(DATA, size=str(len(DATA)))))

    def test_missing_size_is_not_checked(self):
        self.assertEqual('sha512', self._verify(
            base.glance_image(DATA, size=None)))


class UploadTestCase(base.TestCase):

    def setUp(self):
        super(UploadTestCase, self).setUp()
        self.path = os.path.join(self.tmp, 'image')
        with open(self.path, 'wb') as f:
            f.write(DATA)
        self.image_api = mock.create_autospec(glance.API, instance=True)
        self.semaphore = self.useFixture(fixtures.MockPatchObject(
            upload.compute_utils, 'disk_ops_semaphore')).mock
        self.instance = self.make_instance()
        self.received = []

    def _glance_update(self, stored=None, **fields):
        """image_api.update as Glance: read it all, report its hashes."""
        def update(context, image_id, metadata, data=None,
                   purge_props=True):
            # Under the semaphore, like nova's in-tree upload.
            self.semaphore.__enter__.assert_called_once_with()
            self.semaphore.__exit__.assert_not_called()
            self.received.append(b''.join(iter(data)))
            return base.glance_image(
                self.received[-1] if stored is None else stored, **fields)
        self.image_api.update.side_effect = update

    def _upload(self):
        return upload.upload(self.image_api, self.context, base.IMAGE_ID,
                             mock.sentinel.metadata, self.path, len(DATA),
                             self.instance)

    def test_streams_the_file_to_glance_and_returns_its_image(self):
        self._glance_update(name='stored')

        image = self._upload()

        self.assertEqual(base.glance_image(DATA, name='stored'), image)
        self.assertEqual([DATA], self.received)
        self.image_api.update.assert_called_once_with(
            self.context, base.IMAGE_ID, mock.sentinel.metadata, mock.ANY)
        self.assertIsInstance(self.image_api.update.call_args.args[3],
                              upload.HashingReader)
        self.semaphore.__exit__.assert_called_once_with(None, None, None)
        self.assertIn('INFO Uploaded 107.4 KiB to image %s (sha512 verified)'
                      % base.IMAGE_ID, self.logs.output)

    def test_progress_is_reported_against_the_image_size(self):
        updates = []
        listener = lambda *a: updates.append(a)  # noqa: E731
        progress.listen(listener)
        self.addCleanup(progress.unlisten, listener)
        self._glance_update()

        self._upload()

        self.assertEqual((base.INSTANCE_UUID, 'upload', len(DATA), len(DATA)),
                         updates[-1])
        self.assertEqual(2, len(updates))

    def test_damaged_upload_raises_verification_failed(self):
        self._glance_update(stored=DATA[:-1] + b'?')

        self.assertRaises(exception.UploadVerificationFailed, self._upload)

    def test_unverifiable_upload_returns_the_image_and_says_so(self):
        self._glance_update(checksum=None, os_hash_algo=None,
                            os_hash_value=None)

        self.assertEqual(None, self._upload()['checksum'])
        self.assertIn('INFO Uploaded 107.4 KiB to image %s\n' % base.IMAGE_ID,
                      self.logs.output + '\n')

    def test_image_api_error_propagates_and_releases_the_semaphore(self):
        self.image_api.update.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)

        self.assertRaises(nova_exception.ImageNotFound, self._upload)
        self.semaphore.__exit__.assert_called_once()
