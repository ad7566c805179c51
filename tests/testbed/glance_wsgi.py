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

"""gunicorn entry point for a test-bed glance-api.

gunicorn leaves its own command line in ``sys.argv``; Glance must not
mistake those options for its own, so the command line is emptied before
Glance is imported.  Glance reads its configuration from the directory in
``OS_GLANCE_CONFIG_DIR``.

``concurrent.futures.thread`` is imported up front because Glance's atexit
hook otherwise imports it during interpreter shutdown, which fails and
litters the log with a traceback on every stop.
"""

import concurrent.futures.thread  # noqa: F401
import sys

sys.argv = sys.argv[:1]

from glance.wsgi.api import application  # noqa: E402,F401
