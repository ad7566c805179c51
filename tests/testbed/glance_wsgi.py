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
