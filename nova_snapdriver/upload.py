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

"""Phase 4, upload: stream the image to Glance and check what it stored.

The bytes are hashed as they are read for the upload.  Glance hashes what it
receives (``os_hash_algo``/``os_hash_value``, sha512 by default, and the md5
``checksum``); if the two disagree the bytes were damaged on the way and the
snapshot fails, so the compute manager deletes the image instead of leaving
a corrupt one active.  nova's in-tree driver does not look.
"""

import hashlib
import inspect
import io
import sys

from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import exception
from nova_snapdriver import novacompat
from nova_snapdriver import progress

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

CHUNK = 64 * 1024


_GENERATOR_FLAGS = (inspect.CO_GENERATOR | inspect.CO_COROUTINE |
                    inspect.CO_ASYNC_GENERATOR)


def _reading_generator(frame):
    """``frame`` if it runs a generator (or coroutine), else None."""
    if frame is not None and frame.f_code.co_flags & _GENERATOR_FLAGS:
        return frame
    return None


class HashingReader(object):
    """A read-only file that hashes and counts what is read from it.

    It can be read again from the start, hashes, count and progress reset,
    so that a retried upload sends the whole image and verifies:

    - ``seek(0)`` rewinds (the file protocol; requests rewinds a body this
      way, and ``tell()`` gives the position it rewinds to);
    - a new *pass* rewinds by itself.  nova's image API retries a failed
      upload (``[glance] num_retries``, on a connection error or a 503) by
      calling glanceclient's ``images.upload(image_id, data)`` again with
      this same object, and glanceclient reads it through a new generator
      each time (``_chunk_body``: ``data.read(65536)`` until empty), with no
      ``seek`` or ``tell``.  So a read from another generator than the one
      that made the previous reads, or a new iteration of this reader,
      starts a new pass; reads from plain loops are never taken for one.

    A pass that cannot start from the first byte (the file cannot seek)
    raises ``UploadNotRewindable``, on that read and every later one: a
    retry never sends part of the image.
    """

    def __init__(self, fileobj, meter, image_id=None, instance=None):
        self._file = fileobj
        self._meter = meter
        self._image_id = image_id
        self._instance = instance
        # The generator reading this pass (a strong reference: a frame
        # that lives on can never be mistaken for a new one).
        self._consumer = None
        self._broken = None
        self.passes = 1
        self._reset()

    def _reset(self):
        self.sha512 = hashlib.sha512()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sent = 0

    def seekable(self):
        try:
            return bool(self._file.seekable())
        except (AttributeError, OSError, ValueError):
            return False

    def tell(self):
        return self.sent

    def seek(self, offset, whence=io.SEEK_SET):
        """Rewind (``seek(0)``), or stay (the current offset); no more.

        The hashes cover the bytes in the order read, so no other jump is
        possible: it raises ``io.UnsupportedOperation`` (an ``OSError``).
        """
        if whence == io.SEEK_SET and offset == 0:
            self.rewind()
        elif not ((whence == io.SEEK_SET and offset == self.sent) or
                  (whence == io.SEEK_CUR and offset == 0)):
            raise io.UnsupportedOperation(
                'the upload reader can only rewind to 0, not seek to '
                '%r (whence %r)' % (offset, whence))
        return self.sent

    def rewind(self):
        """Start again from the first byte, with fresh hashes and count."""
        if self._broken is not None:
            raise self._broken
        sent = self.sent
        if not sent:
            # Nothing was sent, but a read may have failed part-way and
            # moved the file on: start it again all the same.
            if self.seekable():
                self._file.seek(0)
            return
        try:
            if not self.seekable():
                raise io.UnsupportedOperation('the file is not seekable')
            self._file.seek(0)
        except (OSError, ValueError) as e:
            self._broken = exception.UploadNotRewindable(
                image_id=self._image_id, sent=sent,
                sent_h=progress.human_size(sent), reason=e)
            LOG.error('%s', self._broken, instance=self._instance)
            raise self._broken
        self.passes += 1
        LOG.warning('The upload to image %(image)s is being retried '
                    '(attempt %(attempt)d) after %(sent)s had been read for '
                    'it: sending it again from the first byte',
                    {'image': self._image_id, 'attempt': self.passes,
                     'sent': progress.human_size(sent)},
                    instance=self._instance)
        self._reset()
        self._meter.update(0)

    def _new_pass(self, consumer):
        if consumer is None:
            return
        if self._consumer is not None and consumer is not self._consumer:
            self.rewind()
        self._consumer = consumer

    def read(self, size=-1):
        # The caller: a generator that reads us is one pass of the upload.
        self._new_pass(_reading_generator(sys._getframe(1)))
        if self._broken is not None:
            raise self._broken
        data = self._file.read(size if size is not None else -1)
        if data:
            self.sha512.update(data)
            self.md5.update(data)
            self.sent += len(data)
            self._meter.update(self.sent)
        return data

    def __iter__(self):
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            yield data

    def close(self):
        """Forget the last reader; the file is its opener's to close."""
        self._consumer = None


def _stored(image, key):
    """A field of the translated image, base attribute or property."""
    if image.get(key) is not None:
        return image[key]
    return image.get('properties', {}).get(key)


def verify(image_id, image, reader):
    """Compare Glance's hash of the image with ours; raise on mismatch."""
    algo = _stored(image, 'os_hash_algo')
    stored = _stored(image, 'os_hash_value')
    if algo == 'sha512' and stored:
        sent = reader.sha512.hexdigest()
    else:
        # A Glance configured with another hashing_algorithm still keeps
        # the md5 checksum.
        algo, stored = 'md5', _stored(image, 'checksum')
        sent = reader.md5.hexdigest()
    if not stored:
        LOG.warning('Glance reported no hash for image %(image)s; its '
                    'content could not be verified', {'image': image_id},
                    instance=reader._instance)
        return None
    if stored != sent:
        raise exception.UploadVerificationFailed(
            image_id=image_id, algo=algo, stored=stored, sent=sent)
    size = _stored(image, 'size')
    if size is not None and int(size) != reader.sent:
        raise exception.UploadVerificationFailed(
            image_id=image_id, algo='size', stored=size, sent=reader.sent)
    return algo


def upload(image_api, context, image_id, metadata, path, size, instance):
    """Upload ``path`` as the data of ``image_id``; return Glance's image."""
    with open(path, 'rb') as f:
        return upload_file(image_api, context, image_id, metadata, f, size,
                           instance)


def upload_file(image_api, context, image_id, metadata, fileobj, size,
                instance, take_disk_ops=True):
    """Upload what ``fileobj`` reads as the data of ``image_id``.

    ``fileobj`` is a file or a stream (``imagestream.StreamReader``) of
    exactly ``size`` bytes; it must support ``seek(0)`` for a retried
    upload to start again.  Returns Glance's image.  The upload holds
    nova's disk-ops semaphore (``[compute] max_concurrent_disk_ops``)
    unless the caller holds it already (``take_disk_ops=False``).
    """
    meter = progress.Progress(instance, 'upload', size,
                              CONF.snapdriver.progress_log_interval)
    reader = HashingReader(fileobj, meter, image_id=image_id,
                           instance=instance)
    try:
        # The same call, metadata and semaphore as nova's in-tree
        # driver; nova retries it with the same reader, which rewinds.
        if take_disk_ops:
            with novacompat.disk_ops_semaphore():
                image = image_api.update(context, image_id, metadata,
                                         reader)
        else:
            image = image_api.update(context, image_id, metadata, reader)
    finally:
        reader.close()
    algo = verify(image_id, image, reader)
    LOG.info('Uploaded %(size)s to image %(image)s%(verified)s%(passes)s',
             {'size': progress.human_size(reader.sent), 'image': image_id,
              'verified': ' (%s verified)' % algo if algo else '',
              'passes': ', sent %d times' % reader.passes
              if reader.passes > 1 else ''},
             instance=instance)
    return image
