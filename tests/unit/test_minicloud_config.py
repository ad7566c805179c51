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

"""minicloud_lib's modules import one way: config imports none of them."""

import ast
import os
import unittest

import minicloud_lib

LIB = os.path.dirname(minicloud_lib.__file__)


def imported(module):
    """The minicloud_lib modules that ``module`` imports, anywhere in it."""
    with open(os.path.join(LIB, module + '.py')) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == 'minicloud_lib':
                names.update(alias.name for alias in node.names)
            elif node.module.startswith('minicloud_lib.'):
                names.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split('.')[1] for alias in node.names
                         if alias.name.startswith('minicloud_lib.'))
    return names


class ImportsTestCase(unittest.TestCase):

    def test_config_imports_nothing_of_the_package(self):
        self.assertEqual(set(), imported('config'))

    def test_neutron_conf_builds_on_config_alone(self):
        self.assertEqual({'config'}, imported('neutron_conf'))
