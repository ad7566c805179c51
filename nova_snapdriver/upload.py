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

Hashing costs the compute host 1.5 (sha512) to 1.9 (md5) CPU seconds per
GiB, so one hash is made, the one Glance will make: ``hashes_for`` learns
it before the snapshot begins, from the snapshot's image record, else from
the record of the image the instance was booted from (Glance fills
``os_hash_algo`` in only once an image has data).  Only where neither
says (a server booted from a volume, its image gone) are sha512 and md5
both made, as before.  With ``[snapdriver] verify_upload_hash = False``
nothing is hashed and only the size is compared.

A failed attempt is retried as nova retries it (``[glance] num_retries``),
but from the image's first byte, with a new reader: nova's own retry hands
glanceclient the file object it had already read part-way.
"""

import contextlib
import hashlib
import time

from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import exception
from nova_snapdriver import novacompat
from nova_snapdriver import progress

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: nova's pause between two attempts (``GlanceClientWrapper.call``).
RETRY_DELAY = 1


#: What is hashed when Glance's algorithm cannot be known beforehand: its
#: default, and the md5 checksum that every Glance keeps.
BOTH = ('sha512', 'md5')


def _hasher(name):
    """A new hashlib object for ``name``; ValueError if it is not usable."""
    if name == 'md5':
        return hashlib.md5(usedforsecurity=False)
    try:
        hasher = hashlib.new(name)
        hasher.hexdigest()  # shake_*: a digest length is needed
    except (TypeError, ValueError) as e:
        raise ValueError('%s: %s' % (name, e))
    return hasher


def _stored(image, key):
    """A field of the translated image, base attribute or property."""
    if image.get(key) is not None:
        return image[key]
    return image.get('properties', {}).get(key)


def _algorithm_of(image):
    """The one hash Glance made of ``image``'s data, or None if unknown."""
    algo = _stored(image, 'os_hash_algo')
    if algo:
        try:
            _hasher(algo)
        except ValueError:
            return None
        return algo
    if _stored(image, 'checksum'):
        return 'md5'  # a Glance older than os_hash_algo (Rocky)
    return None


def hashes_for(image_api, context, image, instance):
    """The hashes an upload into ``image`` makes: Glance's, learnt now.

    ``image`` is the snapshot's own record (queued: Glance fills its
    ``os_hash_algo`` in only with the data); the record of the image the
    instance was booted from says how this Glance hashes.  Returns a tuple
    of hashlib names: the one Glance will report, or ``BOTH``; none with
    ``[snapdriver] verify_upload_hash = False``.
    """
    if not CONF.snapdriver.verify_upload_hash:
        return ()
    algo = _algorithm_of(image)
    source = instance.image_ref
    if algo is None and source:
        try:
            algo = _algorithm_of(image_api.get(context, source))
        except Exception as e:
            LOG.debug('Could not read image %(source)s to learn how Glance '
                      'hashes: %(error)s', {'source': source, 'error': e},
                      instance=instance)
    if algo is None:
        LOG.debug('Glance\'s hashing algorithm is not known: the upload is '
                  'hashed with %s', ' and '.join(BOTH), instance=instance)
        return BOTH
    return (algo,)


class HashingReader(object):
    """A read-only file that hashes and counts what is read from it.

    One per upload attempt, made when its file is at its first byte: the
    hashes (``algos``, hashlib names) and the count are those of what
    that attempt sent.  A retry's reader (``again``) sets the progress
    meter back to 0 when it is first read: an attempt that never got to
    send leaves the meter alone.
    """

    def __init__(self, fileobj, meter, algos=BOTH, again=False):
        self._file = fileobj
        self._meter = meter
        self._again = again
        self._hashers = {name: _hasher(name) for name in algos}
        self._update = [h.update for h in self._hashers.values()]
        self.sent = 0

    @property
    def algos(self):
        return tuple(self._hashers)

    def hexdigest(self, name):
        """The hash ``name`` of what was read, or None if not made."""
        hasher = self._hashers.get(name)
        return hasher.hexdigest() if hasher else None

    def read(self, size=-1):
        if self._again:
            self._again = False
            self._meter.update(0)
        data = self._file.read(size if size is not None else -1)
        if data:
            for update in self._update:
                update(data)
            self.sent += len(data)
            self._meter.update(self.sent)
        return data

    def __iter__(self):
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            yield data


def _rewind(fileobj, image_id, sent, instance):
    """Put ``fileobj`` back at its first byte for another attempt.

    ``sent`` is what the last attempt read.  Raises ``UploadNotRewindable``
    if it read some and the file cannot go back (a pipe): a retry never
    sends part of the image.
    """
    try:
        seekable = fileobj.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if not seekable and not sent:
        return
    try:
        if not seekable:
            raise OSError('the file is not seekable')
        fileobj.seek(0)
    except (OSError, ValueError) as e:
        error = exception.UploadNotRewindable(
            image_id=image_id, sent=sent, sent_h=progress.human_size(sent),
            reason=e)
        LOG.error('%s', error, instance=instance)
        raise error


def send(context, image_id, fileobj, meter, instance, hashes=BOTH):
    """Send ``fileobj`` as the image's data; return the attempt's reader.

    Its ``hashes`` (hashlib names) are made of what each attempt sends.

    Tried ``1 + [glance] num_retries`` times on the errors nova's Glance
    client retries, as nova does, but each attempt reads the file from
    its first byte with fresh hashes: nova would hand glanceclient the
    same file object again, already read part-way.
    """
    uploader = novacompat.GlanceUploader(context)
    attempts = 1 + CONF.glance.num_retries
    sent = 0
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            _rewind(fileobj, image_id, sent, instance)
        reader = HashingReader(fileobj, meter, hashes, again=attempt > 1)
        try:
            uploader.send(image_id, reader)
            return reader, attempt
        except novacompat.GLANCE_RETRYABLE as e:
            sent = reader.sent
            last = attempt == attempts
            (LOG.error if last else LOG.warning)(
                'Uploading image %(image)s to Glance at %(server)s failed '
                'after %(sent)s (attempt %(attempt)d of %(attempts)d, '
                '[glance] num_retries): %(error)s%(next)s',
                {'image': image_id, 'server': uploader.server,
                 'sent': progress.human_size(sent), 'attempt': attempt,
                 'attempts': attempts, 'error': e,
                 'next': '' if last else '; sending it again from the '
                 'first byte'}, instance=instance)
            if last:
                raise uploader.gave_up(e)
            time.sleep(RETRY_DELAY)


def verify(image_id, image, reader, instance=None):
    """Compare Glance's hash and size of the image with ours.

    Raises ``UploadVerificationFailed`` on a difference.  Returns the
    algorithm compared, or None when no hash was: the upload hashed
    nothing (``[snapdriver] verify_upload_hash = False``), or, with a
    warning, Glance reported none or hashed with another algorithm than
    this upload (its ``hashing_algorithm`` changed since the instance's
    image was stored).  The size is compared all the same.
    """
    algo = _stored(image, 'os_hash_algo')
    stored = _stored(image, 'os_hash_value')
    if not (algo and stored and reader.hexdigest(algo)):
        # A Glance configured otherwise, or older, still keeps the md5
        # checksum.
        algo, stored = 'md5', _stored(image, 'checksum')
    sent = reader.hexdigest(algo) if stored else None
    if sent is not None and stored != sent:
        raise exception.UploadVerificationFailed(
            image_id=image_id, algo=algo, stored=stored, sent=sent)
    size = _stored(image, 'size')
    if size is not None and int(size) != reader.sent:
        raise exception.UploadVerificationFailed(
            image_id=image_id, algo='size', stored=size, sent=reader.sent)
    if not reader.algos:
        return None  # verify_upload_hash is off: the size alone, asked for
    if not stored:
        LOG.warning('Glance reported no hash for image %(image)s; its '
                    'content could not be verified, only its size',
                    {'image': image_id}, instance=instance)
        return None
    if sent is None:
        LOG.warning('Glance hashed image %(image)s with %(theirs)s, and '
                    'this upload hashed it with %(ours)s: its content '
                    'could not be verified, only its size',
                    {'image': image_id,
                     'theirs': _stored(image, 'os_hash_algo') or 'md5',
                     'ours': ' and '.join(reader.algos)},
                    instance=instance)
        return None
    return algo


def upload(image_api, context, image_id, metadata, path, size, instance,
           hashes=BOTH):
    """Upload ``path`` as the data of ``image_id``; return Glance's image."""
    with open(path, 'rb') as f:
        return upload_file(image_api, context, image_id, metadata, f, size,
                           instance, hashes=hashes)


def upload_file(image_api, context, image_id, metadata, fileobj, size,
                instance, take_disk_ops=True, hashes=BOTH):
    """Upload what ``fileobj`` reads as the data of ``image_id``.

    ``fileobj`` is a file or a stream (``imagestream.StreamReader``) of
    exactly ``size`` bytes; it must support ``seek(0)`` for a retried
    upload to start again.  ``hashes`` are what is hashed on the way
    (``hashes_for``).  Returns Glance's image.

    The calls nova's in-tree driver makes, in its order: the image's
    properties (``image_api.update``), its data, then the image as Glance
    stored it.  They hold nova's disk-ops semaphore (``[compute]
    max_concurrent_disk_ops``) unless the caller holds it already
    (``take_disk_ops=False``).
    """
    meter = progress.Progress(instance, 'upload', size,
                              CONF.snapdriver.progress_log_interval)
    with (novacompat.disk_ops_semaphore() if take_disk_ops
          else contextlib.nullcontext()):
        image_api.update(context, image_id, metadata)
        reader, attempts = send(context, image_id, fileobj, meter, instance,
                                hashes)
        image = image_api.get(context, image_id)
    # The hash compared, else the size if Glance gave one.
    checked = verify(image_id, image, reader, instance) or (
        'size' if _stored(image, 'size') is not None else None)
    LOG.info('Uploaded %(size)s to image %(image)s%(verified)s%(passes)s',
             {'size': progress.human_size(reader.sent), 'image': image_id,
              'verified': ' (%s verified)' % checked if checked else '',
              'passes': ', sent %d times' % attempts
              if attempts > 1 else ''},
             instance=instance)
    return image
