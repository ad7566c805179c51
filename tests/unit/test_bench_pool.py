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

"""Pooling bench runs (tools/bench/bench_pool.py): ratios, interval, table.

The runs are figures as bench.json holds them: a dict of cases, each with
its rows' walls.
"""

import io
import json
import os
import tempfile
import unittest
from unittest import mock

import bench_pool


def case(size, stream, glance, api=None):
    results = {'stream': {'walls': stream},
               'glance-only': {'walls': glance}}
    if api is not None:
        results['image-API-only'] = {'walls': api}
    return {'size_gib': size, 'kind': 'random', 'results': results}


# Two runs: one with both floors, one from before the image-API floor.
NEW = [case(1, [12.0, 11.0], [10.0, 10.0, 12.0], [11.0, 11.0, 11.0]),
       case(4, [40.0, 44.0], [40.0, 40.0, 40.0], [44.0, 40.0, 40.0])]
OLD = [case(1, [10.5], [10.0, 11.0])]


class TestRatios(unittest.TestCase):

    def test_paired_ratios_pool_per_size_over_runs(self):
        pooled = bench_pool.ratios_by_size([NEW, OLD], 'stream',
                                           'glance-only')
        # 12 / 10, 11 / 11; 10.5 / 10.5; 40 / 40, 44 / 40.
        self.assertEqual({1: [1.2, 1.0, 1.0], 4: [1.0, 1.1]},
                         {k: [round(r, 3) for r in v]
                          for k, v in pooled.items()})

    def test_cases_of_another_domain_state_are_not_pooled(self):
        cold = dict(case(1, [5.0], [10.0, 10.0]), state='shutoff')
        live = bench_pool.ratios_by_size([NEW, OLD, [cold]], 'stream',
                                         'glance-only')
        shutoff = bench_pool.ratios_by_size([NEW, OLD, [cold]], 'stream',
                                            'glance-only', 'shutoff')

        self.assertEqual(3, len(live[1]))
        self.assertEqual({1: [0.5]}, shutoff)

    def test_runs_without_the_floor_do_not_count(self):
        pooled = bench_pool.ratios_by_size([NEW, OLD], 'stream',
                                           'image-API-only')
        self.assertEqual([12 / 11, 1.0], pooled[1])

    def test_a_floor_against_the_other_is_upload_by_upload(self):
        pooled = bench_pool.ratios_by_size([NEW, OLD], 'image-API-only',
                                           'glance-only')
        self.assertEqual([1.1, 1.1, 11 / 12], pooled[1])
        self.assertEqual([1.1, 1.0, 1.0], pooled[4])


class TestInterval(unittest.TestCase):

    def test_same_ratios_same_interval(self):
        ratios = [0.9, 1.0, 1.05, 1.1, 1.3]
        self.assertEqual(bench_pool.interval(ratios),
                         bench_pool.interval(ratios))

    def test_interval_holds_the_median_of_many_alike(self):
        low, high = bench_pool.interval([1.0] * 50 + [1.02] * 50)
        self.assertGreaterEqual(low, 1.0)
        self.assertLessEqual(high, 1.02)

    def test_interval_widens_with_spread(self):
        narrow = bench_pool.interval([0.99, 1.0, 1.01] * 5)
        wide = bench_pool.interval([0.8, 1.0, 1.2] * 5)
        self.assertLess(narrow[1] - narrow[0], wide[1] - wide[0])


class TestCommand(unittest.TestCase):

    def run_pool(self, *args):
        paths = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, cases in enumerate([NEW, OLD]):
                paths.append(os.path.join(tmp, '%d.json' % i))
                with open(paths[-1], 'w') as f:
                    json.dump({'args': {}, 'cases': cases}, f)
            out = io.StringIO()
            with mock.patch('sys.stdout', out):
                bench_pool.main(list(args) + paths)
        return out.getvalue().splitlines()

    def test_table(self):
        lines = self.run_pool('--floor', 'image-API-only')
        self.assertIn('stream ÷ image-API-only', lines[0])
        self.assertEqual(4, len(lines))
        self.assertTrue(lines[2].startswith('| 1 GiB | paired | 2 | 1.045'))

    def test_same_rows_refused(self):
        with self.assertRaises(SystemExit):
            self.run_pool('--method', 'glance-only')
