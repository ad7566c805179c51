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

"""Phase 3, extract: write the captured disk as a flat image.

``qemu-img convert`` reads the captured file's whole chain, named node by
node (``chain.Node``), so the image holds the whole disk with no backing
file, in the output format.
"""

import os

from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import novacompat
from nova_snapdriver import progress
from nova_snapdriver import qemu_img

CONF = cfg.CONF
LOG = logging.getLogger(__name__)


def extract(plan, captured, instance):
    """Convert the chain ``captured`` into ``plan.image_path``.

    Returns the image's size.
    """
    with novacompat.disk_ops_semaphore():
        qemu_img.convert(captured, plan.image_path,
                         plan.image_format, compress=plan.compress,
                         coroutines=CONF.snapdriver.convert_coroutines,
                         compression_type=plan.compression_type)
    size = os.path.getsize(plan.image_path)
    LOG.info('Extracted a %(fmt)s image of %(size)s%(compressed)s',
             {'fmt': plan.image_format, 'size': progress.human_size(size),
              'compressed': (' (compressed, %s)' % plan.compression_type
                             if plan.compress else '')},
             instance=instance)
    return size
