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

"""A small real filesystem, to run a snapshot out of space for real.

ext4 on a loop device rather than tmpfs: QEMU opens the block-copy target
with the disk's cache mode, and cache='none' means O_DIRECT, which tmpfs
refuses.  A full ext4 fails writes the way a full compute host does.
"""

import os
import subprocess
import tempfile


class SmallFilesystem(object):
    def __init__(self, size_mib):
        self.size_mib = size_mib
        self.image = None
        self.path = None

    def __enter__(self):
        fd, self.image = tempfile.mkstemp(prefix='snapdriver-smallfs-',
                                          suffix='.img')
        os.close(fd)
        os.truncate(self.image, self.size_mib * 1024 * 1024)
        subprocess.run(['mkfs.ext4', '-q', '-F', '-m', '0', self.image],
                       check=True, capture_output=True)
        self.path = tempfile.mkdtemp(prefix='snapdriver-smallfs-mnt-')
        subprocess.run(['mount', '-o', 'loop', self.image, self.path],
                       check=True, capture_output=True)
        os.rmdir(os.path.join(self.path, 'lost+found'))
        return self

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes=0):
        """Take all free space but ``leave_bytes`` with one file."""
        filler = os.path.join(self.path, 'filler')
        size = max(self.free() - leave_bytes, 0)
        with open(filler, 'wb') as f:
            chunk = b'\0' * (1024 * 1024)
            while size > 0:
                n = min(size, len(chunk))
                try:
                    f.write(chunk[:n])
                    f.flush()
                except OSError:
                    break
                size -= n
        return filler

    def __exit__(self, *exc):
        subprocess.run(['umount', self.path], check=False,
                       capture_output=True)
        os.rmdir(self.path)
        os.unlink(self.image)
