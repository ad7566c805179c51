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


def reader_for(data, algos=upload.BOTH):
    reader = upload.HashingReader(io.BytesIO(data),
                                  mock.Mock(spec=['update']), algos)
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
                         reader.hexdigest('sha512'))
        self.assertEqual(hashlib.md5(DATA).hexdigest(),
                         reader.hexdigest('md5'))
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
                         reader.hexdigest('sha512'))

    def test_empty_file_hashes_nothing_and_does_not_update_meter(self):
        reader, meter, read = self._read_all(b'', list)

        self.assertEqual([], read)
        self.assertEqual(0, reader.sent)
        self.assertEqual(hashlib.sha512(b'').hexdigest(),
                         reader.hexdigest('sha512'))
        meter.update.assert_not_called()

    def test_one_algorithm_makes_that_hash_alone(self):
        reader = reader_for(DATA, ('sha256',))

        self.assertEqual(('sha256',), reader.algos)
        self.assertEqual(hashlib.sha256(DATA).hexdigest(),
                         reader.hexdigest('sha256'))
        self.assertIsNone(reader.hexdigest('sha512'))
        self.assertIsNone(reader.hexdigest('md5'))


class VerifyTestCase(base.TestCase):

    def _verify(self, image, data=DATA, algos=upload.BOTH):
        return upload.verify(base.IMAGE_ID, image, reader_for(data, algos))

    def test_the_one_hash_made_is_compared(self):
        self.assertEqual('sha512', self._verify(base.glance_image(DATA),
                                                algos=('sha512',)))
        self.assertEqual('md5', self._verify(
            base.glance_image(DATA, os_hash_algo=None, os_hash_value=None),
            algos=('md5',)))
        self.assertEqual('sha256', self._verify(
            base.glance_image(DATA, os_hash_algo='sha256',
                              os_hash_value=hashlib.sha256(DATA).hexdigest()),
            algos=('sha256',)))

    def test_the_one_hash_made_still_finds_damage(self):
        exc = self.assertRaises(exception.UploadVerificationFailed,
                                self._verify,
                                base.glance_image(b'other', size=len(DATA)),
                                algos=('sha512',))

        self.assertEqual('sha512', exc.kwargs['algo'])

    def test_glance_hashing_otherwise_is_a_warning_and_the_size_counts(self):
        image = base.glance_image(DATA, os_hash_algo='sha256',
                                  os_hash_value='x')

        self.assertIsNone(self._verify(image, algos=('sha512',)))
        self.assertIn('WARNING Glance hashed image %s with sha256, and this '
                      'upload hashed it with sha512: its content could not '
                      'be verified, only its size' % base.IMAGE_ID,
                      self.logs.output)
        self.assertRaises(exception.UploadVerificationFailed, self._verify,
                          dict(image, size=len(DATA) - 1),
                          algos=('sha512',))

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

    def test_an_upload_that_hashed_nothing_has_its_size_compared_alone(self):
        # verify_upload_hash = False: Glance's hash is not ours to compare
        # (the bytes differ here), and that is no warning: it was asked.
        self.assertIsNone(self._verify(
            base.glance_image(b'other', size=len(DATA)), algos=()))
        self.assertNotIn('WARNING', self.logs.output)
        exc = self.assertRaises(exception.UploadVerificationFailed,
                                self._verify,
                                base.glance_image(DATA, size=len(DATA) - 1),
                                algos=())
        self.assertEqual('size', exc.kwargs['algo'])


class HashesForTestCase(base.TestCase):
    """The one hash to make: what Glance will report, learnt beforehand."""

    def setUp(self):
        super(HashesForTestCase, self).setUp()
        self.image_api = mock.Mock(spec=['get'])
        self.instance = self.make_instance()
        self.instance.image_ref = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
        self.queued = {'id': base.IMAGE_ID, 'status': 'queued',
                       'checksum': None, 'os_hash_algo': None,
                       'os_hash_value': None, 'properties': {}}

    def _hashes(self, image=None):
        return upload.hashes_for(self.image_api, self.context,
                                 image or self.queued, self.instance)

    def _source(self, **fields):
        self.image_api.get.return_value = base.glance_image(b'os', **fields)

    def test_the_booted_image_says_how_glance_hashes(self):
        self._source(os_hash_algo='sha256')

        self.assertEqual(('sha256',), self._hashes())
        self.image_api.get.assert_called_once_with(
            self.context, self.instance.image_ref)

    def test_glance_s_default(self):
        self._source()

        self.assertEqual(('sha512',), self._hashes())

    def test_the_snapshot_s_own_record_comes_first(self):
        self.assertEqual(('sha384',), self._hashes(
            dict(self.queued, os_hash_algo='sha384')))
        self.image_api.get.assert_not_called()

    def test_a_glance_without_os_hash_algo_gets_md5_alone(self):
        self._source(os_hash_algo=None, os_hash_value=None)

        self.assertEqual(('md5',), self._hashes())

    def test_both_when_nothing_tells(self):
        for what in (nova_exception.ImageNotFound(image_id='x'),
                     nova_exception.GlanceConnectionFailed(
                         server='g', reason='down'),
                     base.glance_image(b'', checksum=None, os_hash_algo=None,
                                       os_hash_value=None),
                     # Not a hash Glance's hexdigest could give.
                     base.glance_image(b'', os_hash_algo='shake_128'),
                     base.glance_image(b'', os_hash_algo='no-such-hash')):
            self.image_api.get.reset_mock()
            self.image_api.get.side_effect = (
                what if isinstance(what, Exception) else None)
            self.image_api.get.return_value = what

            self.assertEqual(('sha512', 'md5'), self._hashes(), what)

    def test_nothing_when_verify_upload_hash_is_off(self):
        self.flags(verify_upload_hash=False, group='snapdriver')
        self._source()

        self.assertEqual((), self._hashes())
        self.image_api.get.assert_not_called()

    def test_both_for_a_server_booted_from_a_volume(self):
        self.instance.image_ref = ''

        self.assertEqual(('sha512', 'md5'), self._hashes())
        self.image_api.get.assert_not_called()


URL = 'http://glance.test:9292'
OTHER_URL = 'http://glance2.test:9292'


class Unseekable(io.BytesIO):
    """A stream that can be read once, like a pipe."""

    def seekable(self):
        return False


class GlanceTestCase(base.TestCase):
    """nova's real Glance client, glanceclient and requests; Glance faked.

    Only the HTTP exchange is faked (requests_mock): the image's file
    (``PUT /v2/images/<id>/file``), where a connection may break after
    part of the body went out.
    """

    def setUp(self):
        super(GlanceTestCase, self).setUp()
        self.flags(api_servers=[URL], num_retries=1, group='glance')
        self.sleep = self.useFixture(
            fixtures.MockPatchObject(upload.time, 'sleep')).mock
        self.http = self.useFixture(requests_mock_fixture.Fixture())
        self.context.auth_token = 'token'
        self.instance = self.make_instance()
        self.meter = mock.Mock(spec=['update'])
        # Per attempt: (server, the chunks Glance received).
        self.bodies = []

    def _glance(self, *breaks, url=URL):
        """Attempt n reads ``breaks[n]`` chunks, then the connection drops.

        None: it reads it all and answers 204; an int >= 400: it reads it
        all and answers with that status.
        """
        attempts = iter(breaks)

        def put(request, context):
            chunks, received = next(attempts), []
            self.bodies.append((url, received))
            if chunks is not None and chunks < 400:
                received.extend(itertools.islice(request.body, chunks))
                raise requests.exceptions.ConnectionError(
                    'Connection aborted: connection reset by peer')
            received.extend(request.body)
            context.status_code = chunks or 204
            return ''
        self.http.put(url + '/v2/images/%s/file' % base.IMAGE_ID, text=put)

    def _received(self):
        return [b''.join(body) for url, body in self.bodies]


class SendTestCase(GlanceTestCase):
    """Each attempt reads the file from its first byte, hashes afresh."""

    def _send(self, fileobj=None):
        return upload.send(self.context, base.IMAGE_ID,
                           io.BytesIO(BIG) if fileobj is None else fileobj,
                           self.meter, self.instance)

    def assertHashes(self, data, reader):
        self.assertEqual(len(data), reader.sent)
        self.assertEqual(hashlib.sha512(data).hexdigest(),
                         reader.hexdigest('sha512'))
        self.assertEqual(hashlib.md5(data).hexdigest(),
                         reader.hexdigest('md5'))

    def test_one_attempt_sends_the_file(self):
        self._glance(None)

        reader, attempts = self._send()

        self.assertEqual([BIG], self._received())
        self.assertHashes(BIG, reader)
        self.assertEqual(1, attempts)
        self.sleep.assert_not_called()

    def test_a_retry_after_a_broken_connection_sends_it_all_again(self):
        self._glance(1, None)

        reader, attempts = self._send()

        self.assertEqual([BIG[:GC_CHUNK], BIG], self._received())
        self.assertHashes(BIG, reader)
        self.assertEqual(2, attempts)
        self.sleep.assert_called_once_with(1)
        self.assertIn('WARNING Uploading image %s to Glance at %s failed '
                      'after 1.0 MiB (attempt 1 of 2, [glance] '
                      'num_retries): ' % (base.IMAGE_ID, URL),
                      self.logs.output)
        self.assertIn('sending it again from the first byte',
                      self.logs.output)

    def test_a_retry_starts_over_however_glanceclient_reads_the_body(self):
        # Read by a plain loop, not a generator: the retry must still
        # start at the first byte (telling attempts apart by the frame
        # that reads could not see this one).
        self.useFixture(fixtures.MockPatchObject(
            glance_http._BaseHTTPClient, '_chunk_body',
            staticmethod(lambda body: iter(
                lambda: body.read(GC_CHUNK), b''))))
        self._glance(2, None)

        reader, attempts = self._send()

        self.assertEqual([BIG[:2 * GC_CHUNK], BIG], self._received())
        self.assertHashes(BIG, reader)

    def test_a_503_after_the_whole_body_is_retried_from_the_first_byte(self):
        self._glance(503, None)

        reader, attempts = self._send()

        self.assertEqual([BIG, BIG], self._received())
        self.assertHashes(BIG, reader)
        self.assertEqual(2, attempts)

    def test_attempts_go_round_the_glance_api_servers(self):
        self.flags(api_servers=[URL, OTHER_URL], group='glance')
        self._glance(1, url=URL)
        self._glance(1, url=OTHER_URL)
        self.flags(num_retries=1, group='glance')
        self.useFixture(fixtures.MockPatch('random.shuffle'))

        self.assertRaises(nova_exception.GlanceConnectionFailed, self._send)

        self.assertEqual([URL, OTHER_URL], [url for url, _ in self.bodies])

    def test_the_last_failure_raises_nova_s_connection_error(self):
        self.flags(num_retries=2, group='glance')
        self._glance(1, 1, 1)

        exc = self.assertRaises(nova_exception.GlanceConnectionFailed,
                                self._send)

        self.assertEqual(3, len(self.bodies))
        self.assertIn(URL, str(exc))
        self.assertEqual([mock.call(1)] * 2, self.sleep.call_args_list)
        self.assertIn('ERROR Uploading image %s to Glance at %s failed after '
                      '1.0 MiB (attempt 3 of 3, [glance] num_retries)'
                      % (base.IMAGE_ID, URL), self.logs.output)

    def test_no_retries_means_one_attempt(self):
        self.flags(num_retries=0, group='glance')
        self._glance(1, None)

        self.assertRaises(nova_exception.GlanceConnectionFailed, self._send)

        self.assertEqual(1, len(self.bodies))
        self.sleep.assert_not_called()

    def test_glance_s_refusal_is_nova_s_error_and_not_retried(self):
        for status, error in ((404, nova_exception.ImageNotFound),
                              (403, nova_exception.ImageNotAuthorized),
                              (413, nova_exception.ImageQuotaExceeded)):
            self.bodies = []
            self._glance(status, None)

            self.assertRaises(error, self._send)

            self.assertEqual(1, len(self.bodies), status)
        self.sleep.assert_not_called()

    def test_an_unrewindable_file_fails_the_retry_before_it_sends(self):
        self.flags(num_retries=3, group='glance')
        self._glance(1, None, None, None)

        exc = self.assertRaises(exception.UploadNotRewindable, self._send,
                                Unseekable(BIG))

        # Not one byte of a second attempt.
        self.assertEqual([BIG[:GC_CHUNK]], self._received())
        message = str(exc)
        self.assertIn('The upload of image %s failed after 1048576 bytes '
                      '(1.0 MiB) had been read for it' % base.IMAGE_ID,
                      message)
        self.assertIn('cannot be read again from its first byte', message)
        self.assertIn('Glance stores no partial image', message)
        self.assertIn('ERROR The upload of image %s failed' % base.IMAGE_ID,
                      self.logs.output)

    def test_an_unrewindable_file_may_retry_an_attempt_that_read_nothing(
            self):
        self.flags(num_retries=2, group='glance')
        self._glance(0, None)

        reader, attempts = self._send(Unseekable(BIG))

        self.assertEqual([b'', BIG], self._received())
        self.assertEqual(2, attempts)

    def test_the_meter_starts_again_only_when_a_retry_reads(self):
        self.flags(num_retries=2, group='glance')
        self._glance(1, 0, None)

        self._send()

        updates = [c.args[0] for c in self.meter.update.call_args_list]
        # Attempt 2 never read; attempt 3 started the meter at 0 again.
        self.assertEqual([GC_CHUNK, 0, GC_CHUNK, 2 * GC_CHUNK, len(BIG)],
                         updates)

    def test_a_seek_that_fails_is_not_rewindable(self):
        class SeekFails(io.BytesIO):
            def seek(self, *args):
                raise OSError(29, 'Illegal seek')
        self._glance(1, None)

        exc = self.assertRaises(exception.UploadNotRewindable, self._send,
                                SeekFails(BIG))

        self.assertIn('Illegal seek', str(exc))


class UploadTestCase(GlanceTestCase):
    """The calls nova makes, in its order, under its semaphore."""

    def setUp(self):
        super(UploadTestCase, self).setUp()
        self.path = os.path.join(self.tmp, 'image')
        with open(self.path, 'wb') as f:
            f.write(DATA)
        self.image_api = base.autospec(glance.API)
        self.semaphore = self.useFixture(fixtures.MockPatch(
            'nova.compute.utils.disk_ops_semaphore')).mock
        self.calls = []
        self.image_api.update.side_effect = self._record('update')
        self.stored = None
        self.image_api.get.side_effect = self._record('get')

    def _record(self, name):
        def call(*args, **kwargs):
            # Each under the semaphore, like nova's in-tree upload.
            self.semaphore.__enter__.assert_called_once_with()
            self.semaphore.__exit__.assert_not_called()
            self.calls.append(name)
            if name == 'get':
                received = self._received()[-1]
                return base.glance_image(
                    received if self.stored is None else self.stored,
                    **self.fields)
            return {}
        self.fields = {}
        return call

    def _glance(self, *breaks, **kwargs):
        super(UploadTestCase, self)._glance(*breaks, **kwargs)
        self.http.add_matcher(self._put_matcher)

    def _put_matcher(self, request):
        if request.method == 'PUT':
            self.calls.append('upload')
        return None

    def _upload(self):
        return upload.upload(self.image_api, self.context, base.IMAGE_ID,
                             mock.sentinel.metadata, self.path, len(DATA),
                             self.instance)

    def test_labels_sends_and_reads_back_the_image_in_nova_s_order(self):
        self._glance(None)
        self.fields = {'name': 'stored'}

        image = self._upload()

        self.assertEqual(base.glance_image(DATA, name='stored'), image)
        self.assertEqual(['update', 'upload', 'get'], self.calls)
        self.image_api.update.assert_called_once_with(
            self.context, base.IMAGE_ID, mock.sentinel.metadata)
        self.image_api.get.assert_called_once_with(self.context,
                                                   base.IMAGE_ID)
        self.assertEqual([DATA], self._received())
        self.semaphore.__exit__.assert_called_once_with(None, None, None)
        self.assertIn('INFO Uploaded 107.4 KiB to image %s (sha512 verified)'
                      '\n' % base.IMAGE_ID, self.logs.output)

    def test_progress_is_reported_against_the_image_size(self):
        updates = []
        listener = lambda *a: updates.append(a)  # noqa: E731
        progress.listen(listener)
        self.addCleanup(progress.unlisten, listener)
        self._glance(None)

        self._upload()

        self.assertEqual((base.INSTANCE_UUID, 'upload', len(DATA), len(DATA)),
                         updates[-1])

    def test_damaged_upload_raises_verification_failed(self):
        self._glance(None)
        self.stored = DATA[:-1] + b'?'

        self.assertRaises(exception.UploadVerificationFailed, self._upload)

    def test_unverifiable_upload_returns_the_image_and_says_so(self):
        self._glance(None)
        self.fields = dict(checksum=None, os_hash_algo=None,
                           os_hash_value=None)

        self.assertEqual(None, self._upload()['checksum'])
        self.assertIn('INFO Uploaded 107.4 KiB to image %s (size verified)\n'
                      % base.IMAGE_ID, self.logs.output + '\n')
        self.assertIn('WARNING Glance reported no hash for image %s'
                      % base.IMAGE_ID, self.logs.output)

    def test_a_retried_upload_verifies_what_its_last_attempt_sent(self):
        with open(self.path, 'wb') as f:
            f.write(BIG)
        self._glance(1, None)

        image = self._upload()

        self.assertEqual(base.glance_image(BIG), image)
        self.assertIn('INFO Uploaded 2.2 MiB to image %s (sha512 '
                      'verified), sent 2 times' % base.IMAGE_ID,
                      self.logs.output)

    def test_image_api_error_propagates_and_releases_the_semaphore(self):
        self.image_api.update.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)

        self.assertRaises(nova_exception.ImageNotFound, self._upload)
        self.semaphore.__exit__.assert_called_once()
        self.assertEqual([], self.bodies)

    def test_held_semaphore_is_not_taken_again(self):
        self._glance(None)
        self.semaphore.__enter__.side_effect = AssertionError('taken')
        self.image_api.update.side_effect = None
        self.image_api.get.side_effect = None
        self.image_api.get.return_value = base.glance_image(DATA)

        with open(self.path, 'rb') as f:
            upload.upload_file(self.image_api, self.context, base.IMAGE_ID,
                               mock.sentinel.metadata, f, len(DATA),
                               self.instance, take_disk_ops=False)

        self.assertEqual([DATA], self._received())
