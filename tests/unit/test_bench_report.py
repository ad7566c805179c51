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

"""The bench's tables (tools/bench/bench_report.py), from figures alone.

A run's figures are a dict per case; these tests build one as a run with
both floors writes it (--repeat 3), and one as runs from before the
image-API floor wrote it (``--replot`` of their bench.json must still
work), and read the table rows they give.
"""

import unittest

import bench_report

GiB = 1024 ** 3


def snapshot_run(wall, uploaded=GiB):
    return {'wall': wall, 'phases': {'plan': 0.1, 'stream': wall - 0.1},
            'transient': 0.0, 'peak_temp': 0, 'uploaded': uploaded}


def case(results):
    return {'size_gib': 1, 'kind': 'random', 'layout': 'instance',
            'results': results}


def with_walls(run, walls):
    return dict(run, wall=sorted(walls)[len(walls) // 2], walls=walls)


def new_case():
    """Three rounds: stream, its read alone, and four uploads per floor."""
    return case({
        'stream': with_walls(snapshot_run(12.0), [12.0, 11.0, 13.0]),
        'stream (read alone)': with_walls(snapshot_run(6.0, uploaded=0),
                                          [6.0, 6.0, 6.0]),
        'glance-only': {'wall': 10.0, 'walls': [10.0, 10.0, 12.0, 10.0]},
        'image-API-only': {'wall': 11.0,
                           'walls': [10.4, 11.0, 12.0, 11.0]},
    })


def rows(cases):
    """The table's rows, as lists of cells, by method."""
    table = bench_report.timing_table(cases)
    cells = [[c.strip() for c in line.strip('|').split('|')]
             for line in table.splitlines()[2:]]
    return {row[3]: row for row in cells}


class TestTimingTable(unittest.TestCase):

    def test_ratios_to_both_floors(self):
        row = rows([new_case()])['stream']
        self.assertEqual(['12.0', '1.20', '1.09', '-'], row[4:8])

    def test_host_cpu_per_gib_where_it_was_measured(self):
        measured = new_case()
        measured['size_gib'] = 4
        measured['results']['stream']['cpu'] = {
            'glance': 9.0, 'qemu': 2.0, 'ours': 6.0, 'host': 8.0}
        # Before 2026-12-07: no 'host', children left out of 'ours'.
        measured['results']['stream (read alone)']['cpu'] = {
            'glance': 0.0, 'qemu': 1.0, 'ours': 3.0}
        table = rows([measured])

        self.assertEqual('2.00', table['stream'][10])
        self.assertEqual('-', table['stream (read alone)'][10])
        self.assertEqual('-', table['glance-only'][10])

    def test_paired_takes_the_uploads_around_each_run(self):
        # Round 1 lies between uploads 0 and 1 (mean 10), round 2 between
        # 1 and 2 (11), round 3 between 2 and 3 (11): 1.20, 1.00, 1.18.
        phases = rows([new_case()])['stream'][11]
        self.assertIn('paired ÷ glance-only 1.18 (1.00-1.20)', phases)
        self.assertIn('paired ÷ image-API-only', phases)

    def test_the_read_alone_has_no_image_api_ratio(self):
        row = rows([new_case()])['stream (read alone)']
        self.assertEqual('0.60', row[5])
        self.assertEqual('-', row[6])
        self.assertIn('paired ÷ glance-only', row[11])
        self.assertNotIn('image-API-only', row[11])

    def test_floor_rows(self):
        table = rows([new_case()])
        self.assertEqual(['10.0', '1.00', '0.91'],
                         table['glance-only'][4:7])
        api = table['image-API-only']
        self.assertEqual(['11.0', '1.10', '1.00'], api[4:7])
        # Each upload ÷ glance-only's next to it: 1.04, 1.10, 1.00, 1.10.
        self.assertIn('side by side ÷ glance-only 1.07 (1.00-1.10)', api[11])

    def test_a_run_from_before_the_image_api_floor(self):
        old = new_case()
        del old['results']['image-API-only']
        table = rows([old])
        self.assertNotIn('image-API-only', table)
        self.assertEqual(['12.0', '1.20', '-'], table['stream'][4:7])
        self.assertNotIn('image-API-only', table['stream'][11])

    def test_one_round_has_no_paired_ratio(self):
        one = case({
            'stream': with_walls(snapshot_run(12.0), [12.0]),
            'glance-only': {'wall': 10.0, 'walls': [10.0, 10.0]},
            'image-API-only': {'wall': 11.0, 'walls': [11.0, 11.0]},
        })
        self.assertNotIn('paired', rows([one])['stream'][11])


class Axes(object):
    """What plot_times draws, kept: the bars' labels."""

    def bar(self, x, heights, **kwargs):
        self.heights = heights

    def set_xticklabels(self, labels, **kwargs):
        self.labels = labels

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TestPlot(unittest.TestCase):

    def test_floors_are_not_drawn_as_drivers(self):
        ax = Axes()
        bench_report.plot_times(ax, [new_case()])
        self.assertEqual(['1G random instance stream',
                          '1G random instance stream (read alone)'],
                         ax.labels)
