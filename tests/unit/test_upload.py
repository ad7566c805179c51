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

"""upload: the bytes sent are hashed, and Glance's hash must agree."""

import hashlib
import io
import itertools
import os
from unittest import mock

import fixtures
from glanceclient.common import http as glance_http
import requests
from requests_mock.contrib import fixture as requests_mock_fixture

from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver import exception
from nova_snapdriver import progress
from nova_snapdriver import upload
from tests.unit import base

DATA = b'\x00\x01snapshot\xff' * 10000
# Three of glanceclient's 1 MiB chunks, the last one short.
BIG = bytes(range(256)) * 9000
GC_CHUNK = glance_http.CHUNKSIZE


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


def glanceclient_pass(reader):
    """A fresh read of ``reader`` the way glanceclient reads a body.

    Each call of ``images.upload`` (so each retry by nova's image API)
    wraps the same object in a new ``_chunk_body`` generator.
    """
    return glance_http._BaseHTTPClient._chunk_body(reader)


class Unseekable(io.BytesIO):
    """A stream that can be read once, like a pipe."""

    def seekable(self):
        return False


class ReadOnly(object):
    """A file-like object with nothing but ``read``."""

    def __init__(self, data):
        self.read = io.BytesIO(data).read


class RewindTestCase(base.TestCase):
    """A retried upload reads the file again from its first byte."""

    def setUp(self):
        super(RewindTestCase, self).setUp()
        self.meter = mock.Mock(spec=['update'])
        self.instance = self.make_instance()

    def _reader(self, fileobj=None):
        return upload.HashingReader(
            io.BytesIO(BIG) if fileobj is None else fileobj, self.meter,
            image_id=base.IMAGE_ID, instance=self.instance)

    def assertHashes(self, data, reader):
        self.assertEqual(len(data), reader.sent)
        self.assertEqual(hashlib.sha512(data).hexdigest(),
                         reader.sha512.hexdigest())
        self.assertEqual(hashlib.md5(data).hexdigest(),
                         reader.md5.hexdigest())

    def test_seek_zero_rewinds_with_hashes_count_and_progress_reset(self):
        reader = self._reader()
        reader.read(5000)
        self.meter.reset_mock()

        self.assertEqual(0, reader.seek(0))

        self.assertEqual(0, reader.tell())
        self.assertHashes(b'', reader)
        self.meter.update.assert_called_once_with(0)
        self.assertEqual(BIG, reader.read())
        self.assertHashes(BIG, reader)
        self.assertEqual(2, reader.passes)
        self.assertIn('WARNING The upload to image %s is being retried '
                      '(attempt 2) after 4.9 KiB had been read for it: '
                      'sending it again from the first byte'
                      % base.IMAGE_ID, self.logs.output)

    def test_seek_zero_before_any_read_does_nothing(self):
        reader = self._reader()

        self.assertEqual(0, reader.seek(0))

        self.assertEqual(1, reader.passes)
        self.meter.update.assert_not_called()
        self.assertNotIn('retried', self.logs.output)

    def test_a_retry_after_a_first_read_that_failed_starts_the_file_at_0(
            self):
        # Nothing was sent, but the file moved on: it is rewound all the
        # same, with no pass counted.
        fileobj = io.BytesIO(BIG)
        fileobj.seek(1234)
        reader = self._reader(fileobj)

        self.assertEqual(0, reader.seek(0))

        self.assertEqual(0, fileobj.tell())
        self.assertEqual(1, reader.passes)
        self.assertEqual(BIG, reader.read())

    def test_tell_and_seeks_that_stay_put_report_the_position(self):
        reader = self._reader()
        reader.read(100)

        self.assertEqual(100, reader.tell())
        self.assertEqual(100, reader.seek(100))
        self.assertEqual(100, reader.seek(0, io.SEEK_CUR))
        self.assertEqual(BIG[100:200], reader.read(100))
        self.assertTrue(reader.seekable())

    def test_any_other_seek_is_refused_as_unsupported(self):
        reader = self._reader()
        reader.read(100)

        for args in ((10,), (0, io.SEEK_END), (5, io.SEEK_CUR)):
            # An OSError, as requests expects from a stream it cannot size.
            self.assertRaises(io.UnsupportedOperation, reader.seek, *args)
        self.assertEqual(100, reader.tell())
        self.assertEqual(BIG[100:200], reader.read(100))

    def test_a_new_glanceclient_pass_after_a_broken_one_starts_over(self):
        reader = self._reader()
        first = glanceclient_pass(reader)
        self.assertEqual(BIG[:GC_CHUNK], next(first))

        second = b''.join(glanceclient_pass(reader))

        self.assertEqual(BIG, second)
        self.assertHashes(BIG, reader)
        self.assertEqual(2, reader.passes)
        self.assertIn('(attempt 2) after 1.0 MiB had been read',
                      self.logs.output)

    def test_a_new_glanceclient_pass_after_a_finished_one_starts_over(self):
        reader = self._reader()
        passes = [b''.join(glanceclient_pass(reader)) for _ in range(3)]

        self.assertEqual([BIG] * 3, passes)
        self.assertHashes(BIG, reader)
        self.assertEqual(3, reader.passes)

    def test_a_new_iteration_starts_over(self):
        reader = self._reader()
        broken = iter(reader)
        next(broken)

        self.assertEqual(BIG, b''.join(reader))
        self.assertEqual(BIG, b''.join(reader))
        self.assertHashes(BIG, reader)

    def test_the_same_pass_reads_on_and_plain_loops_are_one_pass(self):
        reader = self._reader()
        chunks = glanceclient_pass(reader)
        next(chunks)
        reader.read(10)   # not from a generator: no new pass
        rest = b''.join(chunks)

        self.assertEqual(BIG[GC_CHUNK + 10:], rest)
        self.assertEqual(b'', reader.read(10))
        self.assertEqual(1, reader.passes)
        self.assertHashes(BIG, reader)

    def test_unrewindable_file_fails_the_retry_and_every_later_read(self):
        for fileobj in (Unseekable(BIG), ReadOnly(BIG)):
            reader = self._reader(fileobj)
            next(glanceclient_pass(reader))

            retry = glanceclient_pass(reader)
            exc = self.assertRaises(exception.UploadNotRewindable,
                                    next, retry)

            message = str(exc)
            self.assertIn('The upload of image %s failed after 1048576 bytes '
                          '(1.0 MiB) had been read for it' % base.IMAGE_ID,
                          message)
            self.assertIn('cannot be read again from its first byte',
                          message)
            self.assertIn('Glance stores no partial image', message)
            # Never the rest of the file, however it is asked for.
            self.assertRaises(exception.UploadNotRewindable, reader.read)
            self.assertRaises(exception.UploadNotRewindable, reader.seek, 0)
            self.assertRaises(exception.UploadNotRewindable, list, reader)
            self.assertIn('ERROR The upload of image %s failed'
                          % base.IMAGE_ID, self.logs.output)

    def test_seek_failing_in_the_file_is_not_rewindable(self):
        class SeekFails(io.BytesIO):
            def seek(self, *args):
                raise OSError(29, 'Illegal seek')
        reader = self._reader(SeekFails(DATA))
        reader.read(10)

        exc = self.assertRaises(exception.UploadNotRewindable,
                                reader.seek, 0)

        self.assertIn('Illegal seek', str(exc))


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
        self.semaphore = self.useFixture(fixtures.MockPatch(
            'nova.compute.utils.disk_ops_semaphore')).mock
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

    def test_retry_after_a_partial_read_sends_it_all_and_verifies(self):
        with open(self.path, 'wb') as f:
            f.write(BIG)

        def update(context, image_id, metadata, data=None,
                   purge_props=True):
            # nova's image API: the first attempt breaks after 2 chunks,
            # the retry reads the same object again.
            self.received.append(next(glanceclient_pass(data)))
            self.received.append(b''.join(glanceclient_pass(data)))
            return base.glance_image(self.received[-1])
        self.image_api.update.side_effect = update

        image = self._upload()

        self.assertEqual([BIG[:GC_CHUNK], BIG], self.received)
        self.assertEqual(base.glance_image(BIG), image)
        self.assertIn('WARNING The upload to image %s is being retried '
                      '(attempt 2) after 1.0 MiB had been read for it'
                      % base.IMAGE_ID, self.logs.output)
        self.assertIn('INFO Uploaded 2.2 MiB to image %s (sha512 '
                      'verified), sent 2 times' % base.IMAGE_ID,
                      self.logs.output)

    def test_image_api_error_propagates_and_releases_the_semaphore(self):
        self.image_api.update.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)

        self.assertRaises(nova_exception.ImageNotFound, self._upload)
        self.semaphore.__exit__.assert_called_once()


class NovaRetryTestCase(base.TestCase):
    """nova's real retry loop, glanceclient and requests; Glance mocked.

    ``GlanceClientWrapper.call`` retries ``upload`` on a connection error
    by calling ``images.upload(image_id, data)`` again with the same
    reader; glanceclient streams it as a chunked body.  Only the HTTP
    exchange is faked (requests_mock), where a connection breaks after
    part of the body went out.
    """

    URL = 'http://glance.test:9292'

    def setUp(self):
        super(NovaRetryTestCase, self).setUp()
        self.flags(num_retries=1, group='glance')
        self.useFixture(fixtures.MockPatchObject(glance.time, 'sleep'))
        self.http = self.useFixture(requests_mock_fixture.Fixture())
        self.context.auth_token = 'token'
        self.bodies = []
        self.reader = upload.HashingReader(
            io.BytesIO(BIG), mock.Mock(spec=['update']),
            image_id=base.IMAGE_ID, instance=self.make_instance())

    def _glance(self, *breaks):
        """PUT .../file: attempt n reads ``breaks[n]`` chunks, then fails.

        None: reads it all and answers 204.
        """
        attempts = iter(breaks)

        def put(request, context):
            chunks, received = next(attempts), []
            self.bodies.append(received)
            received.extend(itertools.islice(request.body, chunks))
            if chunks is not None:
                raise requests.exceptions.ConnectionError(
                    'Connection aborted: connection reset by peer')
            context.status_code = 204
            return ''
        self.http.put(self.URL + '/v2/images/%s/file' % base.IMAGE_ID,
                      text=put)

    def _call(self):
        wrapper = glance.GlanceClientWrapper(self.context, self.URL)
        return wrapper.call(self.context, 2, 'upload',
                            args=(base.IMAGE_ID, self.reader))

    def test_retry_after_a_broken_connection_sends_everything(self):
        self._glance(1, None)

        self._call()

        self.assertEqual([BIG[:GC_CHUNK], BIG],
                         [b''.join(body) for body in self.bodies])
        self.assertEqual(2, self.reader.passes)
        upload.verify(base.IMAGE_ID, base.glance_image(BIG), self.reader)
        self.assertIn("Error contacting glance server '%s' for 'upload', "
                      "retrying." % self.URL, self.logs.output)
        self.assertIn('(attempt 2) after 1.0 MiB had been read',
                      self.logs.output)

    def test_without_rewind_the_retry_would_send_the_tail(self):
        # What nova's retry did before: the same reader, read on.
        self.reader._new_pass = lambda consumer: None
        self._glance(1, None)

        self._call()

        stored = b''.join(self.bodies[-1])
        self.assertEqual(BIG[GC_CHUNK:], stored)
        self.assertRaises(exception.UploadVerificationFailed, upload.verify,
                          base.IMAGE_ID, base.glance_image(stored),
                          self.reader)

    def test_unrewindable_retry_sends_nothing_and_is_not_retried_again(self):
        self.reader._file = Unseekable(BIG)
        self.flags(num_retries=3, group='glance')
        self._glance(1, None, None, None)

        self.assertRaises(exception.UploadNotRewindable, self._call)

        # The retry raised on its first read: not one byte more.
        self.assertEqual([[BIG[:GC_CHUNK]], []], self.bodies)
