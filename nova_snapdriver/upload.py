"""Phase 4, upload: stream the image to Glance and check what it stored.

The bytes are hashed as they are read for the upload.  Glance hashes what it
receives (``os_hash_algo``/``os_hash_value``, sha512 by default, and the md5
``checksum``); if the two disagree the bytes were damaged on the way and the
snapshot fails, so the compute manager deletes the image instead of leaving
a corrupt one active.  nova's in-tree driver does not look.
"""

import hashlib

from nova.compute import utils as compute_utils
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import exception
from nova_snapdriver import progress

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

CHUNK = 64 * 1024


class HashingReader(object):
    """A read-only file that hashes and counts what is read from it."""

    def __init__(self, fileobj, meter):
        self._file = fileobj
        self._meter = meter
        self.sha512 = hashlib.sha512()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sent = 0

    def read(self, size=-1):
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
                    'content could not be verified', {'image': image_id})
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
    meter = progress.Progress(instance, 'upload', size,
                              CONF.snapdriver.progress_log_interval)
    with open(path, 'rb') as f:
        reader = HashingReader(f, meter)
        # The same call, metadata and semaphore as nova's in-tree driver.
        with compute_utils.disk_ops_semaphore:
            image = image_api.update(context, image_id, metadata, reader)
    algo = verify(image_id, image, reader)
    LOG.info('Uploaded %(size)s to image %(image)s%(verified)s',
             {'size': progress.human_size(reader.sent), 'image': image_id,
              'verified': ' (%s verified)' % algo if algo else ''},
             instance=instance)
    return image
