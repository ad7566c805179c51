#!/usr/bin/env python3
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

"""A real one-machine OpenStack whose nova-compute runs our driver.

    tools/minicloud/minicloud up       bring the stack up (refused if up)
    tools/minicloud/minicloud status   what runs, and where
    tools/minicloud/minicloud down     stop everything, remove its domains
    tools/minicloud/minicloud env      print the shell variables for the CLI
    tools/minicloud/minicloud tempest  tempest's compute image tests and
                                       our plugin's

Run it through ``tools/minicloud/minicloud`` (the shell wrapper), which
installs the host packages and the pinned Python environment first.
This file is only the entry point: the code is the package minicloud_lib/
beside it (its __init__ describes the cloud).  The names below are those
tests/e2e uses as ``minicloud.<name>``.
"""

import sys

from minicloud_lib.cli import main
from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import COMPUTE_CONF
from minicloud_lib.config import COMPUTE_USER
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import SERVICES
from minicloud_lib.config import STATE
from minicloud_lib.processes import critical_in_log
from minicloud_lib.processes import log_tail
from minicloud_lib.processes import pid_of
from minicloud_lib.processes import running
from minicloud_lib.services import openstack
from minicloud_lib.services import start_compute

__all__ = ['CALL_TIMEOUT', 'COMPUTE_CONF', 'COMPUTE_USER', 'MinicloudError',
           'SERVICES', 'STATE', 'critical_in_log', 'log_tail', 'main',
           'openstack', 'pid_of', 'running', 'start_compute']

if __name__ == '__main__':
    sys.exit(main())
