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
    return {row[4]: row for row in cells}


def columns(cases):
    """The table's rows, each a dict of its cells by column, by method."""
    table = bench_report.timing_table(cases)
    lines = [[c.strip() for c in line.strip('|').split('|')]
             for line in table.splitlines()]
    header = lines[0]
    return {row[4]: dict(zip(header, row)) for row in lines[2:]}


class TestTimingTable(unittest.TestCase):

    def test_ratios_to_both_floors(self):
        row = rows([new_case()])['stream']
        self.assertEqual(['12.0', '1.20', '1.09', '-'], row[5:9])

    def test_host_cpu_per_gib_where_it_was_measured(self):
        measured = new_case()
        measured['size_gib'] = 4
        measured['results']['stream']['cpu'] = {
            'glance': 9.0, 'qemu': 2.0, 'ours': 6.0, 'host': 8.0}
        # Before 2026-12-07: no 'host', children left out of 'ours'.
        measured['results']['stream (read alone)']['cpu'] = {
            'glance': 0.0, 'qemu': 1.0, 'ours': 3.0}
        table = rows([measured])

        self.assertEqual('2.00', table['stream'][12])
        self.assertEqual('-', table['stream (read alone)'][12])
        self.assertEqual('-', table['glance-only'][12])

    def test_paired_takes_the_uploads_around_each_run(self):
        # Round 1 lies between uploads 0 and 1 (mean 10), round 2 between
        # 1 and 2 (11), round 3 between 2 and 3 (11): 1.20, 1.00, 1.18.
        phases = rows([new_case()])['stream'][13]
        self.assertIn('paired ÷ glance-only 1.18 (1.00-1.20)', phases)
        self.assertIn('paired ÷ image-API-only', phases)

    def test_the_read_alone_has_no_image_api_ratio(self):
        row = rows([new_case()])['stream (read alone)']
        self.assertEqual('0.60', row[6])
        self.assertEqual('-', row[7])
        self.assertIn('paired ÷ glance-only', row[13])
        self.assertNotIn('image-API-only', row[13])

    def test_floor_rows(self):
        table = rows([new_case()])
        self.assertEqual(['10.0', '1.00', '0.91'],
                         table['glance-only'][5:8])
        api = table['image-API-only']
        self.assertEqual(['11.0', '1.10', '1.00'], api[5:8])
        # Each upload ÷ glance-only's next to it: 1.04, 1.10, 1.00, 1.10.
        self.assertIn('side by side ÷ glance-only 1.07 (1.00-1.10)', api[13])

    def test_a_run_from_before_the_image_api_floor(self):
        old = new_case()
        del old['results']['image-API-only']
        table = rows([old])
        self.assertNotIn('image-API-only', table)
        self.assertEqual(['12.0', '1.20', '-'], table['stream'][5:8])
        self.assertNotIn('image-API-only', table['stream'][13])

    def test_one_round_has_no_paired_ratio(self):
        one = case({
            'stream': with_walls(snapshot_run(12.0), [12.0]),
            'glance-only': {'wall': 10.0, 'walls': [10.0, 10.0]},
            'image-API-only': {'wall': 11.0, 'walls': [11.0, 11.0]},
        })
        self.assertNotIn('paired', rows([one])['stream'][13])


def cold_case():
    """A shut-off domain, three rounds: our cold stream against in-tree."""
    stream = with_walls(snapshot_run(9.0), [9.0, 8.0, 10.0])
    stream.update(ran='ours, cold stream', cpu={
        'glance': 8.0, 'qemu': 0.0, 'ours': 3.0, 'host': 3.0})
    intree = with_walls(dict(snapshot_run(15.0), phases={
        'extract': 3.0, 'upload': 12.0}, peak_temp=GiB), [15.0, 14.0, 16.0])
    intree.update(ran='nova in-tree', cpu={
        'glance': 8.0, 'qemu': 0.0, 'ours': 5.0, 'host': 5.0})
    return dict(case({
        'stream': stream,
        'in-tree': intree,
        'glance-only': {'wall': 10.0, 'walls': [10.0, 10.0, 10.0, 10.0]},
        'image-API-only': {'wall': 10.0, 'walls': [10.0] * 4},
    }), state='shutoff')


class TestDomainStates(unittest.TestCase):

    def test_every_row_says_its_state(self):
        table = columns([new_case(), cold_case()])
        self.assertEqual('shutoff', table['in-tree']['state'])
        self.assertEqual('shutoff', table['glance-only']['state'])
        # new_case() has no state: a run from before --state, running.
        self.assertEqual('running',
                         columns([new_case()])['stream']['state'])

    def test_cold_rows_ratios_peak_temp_cpu_and_what_ran(self):
        table = columns([cold_case()])
        ours, intree = table['stream'], table['in-tree']

        self.assertEqual('0.60', ours['÷ in-tree'])
        self.assertEqual('0.90', ours['÷ glance-only'])
        self.assertEqual('0.00', ours['peak temp ÷ image'])
        self.assertEqual('1.00', intree['peak temp ÷ image'])
        self.assertEqual('3.00', ours['host CPU s/GiB'])
        self.assertEqual('5.00', intree['host CPU s/GiB'])
        self.assertTrue(ours['phases s'].startswith(
            'ran: ours, cold stream; '), ours['phases s'])
        self.assertIn('paired ÷ glance-only 0.90 (0.80-1.00)',
                      ours['phases s'])
        self.assertEqual('-', ours['guest down s'])

    def test_suspend_rows_give_the_guest_downtime(self):
        suspended = cold_case()
        suspended['state'] = 'suspend'
        intree = suspended['results']['in-tree']
        intree.update(down=2.5, downs=[2.5, 2.25, 3.0])
        intree['phases']['save'] = 2.0  # nova's managed save, timed
        table = columns([suspended])

        self.assertIn('save 2.0, extract 3.0', table['in-tree']['phases s'])

        self.assertEqual('2.50', table['in-tree']['guest down s'])
        self.assertIn('down 2.50, 2.25, 3.00', table['in-tree']['phases s'])
        self.assertEqual('-', table['glance-only']['guest down s'])

    def test_notes_name_the_states_and_the_methods_left_out(self):
        note = bench_report.state_note([new_case(), cold_case()])
        self.assertIn('State shutoff', note)
        self.assertIn('rebase, copy and backup are left out', note)
        self.assertNotIn('State suspend', note)
        self.assertEqual('', bench_report.state_note([new_case()]))


class TestMethodsInState(unittest.TestCase):

    def test_running_times_every_method(self):
        methods = ['rebase', 'copy', 'backup', 'stream']
        self.assertEqual(methods,
                         bench_report.methods_in_state(methods, 'running'))

    def test_cold_only_stream(self):
        for domain_state in ('shutoff', 'suspend'):
            self.assertEqual(['stream'], bench_report.methods_in_state(
                ['rebase', 'copy', 'backup', 'stream'], domain_state))
            self.assertEqual([], bench_report.methods_in_state(
                ['copy'], domain_state))


class TestWhatRan(unittest.TestCase):

    def test_in_tree_is_nova(self):
        self.assertEqual('nova in-tree', bench_report.what_ran(
            'in-tree', ['Planned cold snapshot (capture method stream)']))

    def test_ours_planned(self):
        self.assertEqual('ours, cold stream', bench_report.what_ran(
            'ours', ['Beginning', 'Planned cold snapshot (capture method '
                     'stream) of /x/disk (qcow2, 1 GiB virtual, ...)']))

    def test_ours_says_how(self):
        self.assertEqual(
            'ours, cold stream, the guest suspended while its disk is read',
            bench_report.what_ran('ours', [
                'Planned cold snapshot (capture method stream, the guest '
                'suspended while its disk is read) of /x/disk (qcow2, ...']))

    def test_ours_cold_convert_is_named_as_nova_does_it(self):
        self.assertEqual('ours, cold qemu-img convert',
                         bench_report.what_ran('ours', [
                             'Planned cold snapshot (capture method '
                             'rebase) of /x/disk']))

    def test_ours_left_to_nova(self):
        ran = bench_report.what_ran('ours', [
            "Snapshot of [workarounds] disable_libvirt_livesnapshot (nova "
            "suspends the guest for a cold snapshot) is left to nova's "
            "libvirt driver"])
        self.assertEqual("ours, left to nova's code ([workarounds] "
                         "disable_libvirt_livesnapshot (nova suspends the "
                         "guest for a cold snapshot))", ran)

    def test_nothing_logged_says_nothing(self):
        self.assertIsNone(bench_report.what_ran('ours', ['other']))


class Axes(object):
    """What plot_times draws, kept: the bars' labels."""

    def bar(self, x, heights, **kwargs):
        # The first call draws the data; legend_layouts' come after.
        if 'heights' not in vars(self):
            self.heights = heights

    def set_xticklabels(self, labels, **kwargs):
        self.labels = labels

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TestPlot(unittest.TestCase):

    def test_floors_are_not_drawn_as_drivers(self):
        ax = Axes()
        bench_report.plot_times(ax, [new_case()])
        self.assertEqual(['1G random instance running stream',
                          '1G random instance running stream (read alone)'],
                         ax.labels)

    def test_labels_say_the_state(self):
        ax = Axes()
        bench_report.plot_times(ax, [cold_case()])
        self.assertEqual(['1G random instance shutoff stream',
                          '1G random instance shutoff in-tree'], ax.labels)

    def test_cpu_is_drawn_as_a_ratio_to_nova_in_trees(self):
        results = new_case()['results']
        results['stream']['cpu'] = {'host': 3.0}
        results['in-tree'] = dict(snapshot_run(18.0), cpu={'host': 6.0})
        ax = Axes()
        bench_report.plot_cpu(ax, [case(results)])
        self.assertEqual(['1G random instance running stream'], ax.labels)
        self.assertEqual([0.5], ax.heights)

    def test_no_cpu_bars_without_an_in_tree_figure(self):
        ax = Axes()
        bench_report.plot_cpu(ax, [new_case()])
        self.assertEqual([], ax.labels)


def cpu_case(stream_hosts, intree_hosts):
    """A case whose stream and in-tree kept each round's host CPU."""
    results = new_case()['results']
    results['stream']['cpu'] = {'host': stream_hosts[1]}
    results['stream']['cpus'] = [{'host': h} for h in stream_hosts]
    results['in-tree'] = with_walls(snapshot_run(18.0), [18.0] * 3)
    results['in-tree']['cpu'] = {'host': intree_hosts[1]}
    results['in-tree']['cpus'] = [{'host': h} for h in intree_hosts]
    return case(results)


class TestCpuByRound(unittest.TestCase):

    def test_each_round_against_in_trees_of_the_same_round(self):
        # 3/6, 2/8, 5/5: 0.50, 0.25, 1.00.
        phases = rows([cpu_case([3.0, 2.0, 5.0],
                                [6.0, 8.0, 5.0])])['stream'][13]
        self.assertIn('host CPU ÷ in-tree by round 0.50 (0.25-1.00)', phases)

    def test_the_wall_against_in_trees_of_the_same_round_too(self):
        # 12/18, 11/18, 13/18.
        phases = rows([cpu_case([3.0, 2.0, 5.0],
                                [6.0, 8.0, 5.0])])['stream'][13]
        self.assertIn('; ÷ in-tree by round 0.67 (0.61-0.72)', phases)

    def test_plot_bar_is_the_rounds_median_with_their_range(self):
        [row] = bench_report.cpu_ratios([cpu_case([3.0, 2.0, 5.0],
                                                  [6.0, 8.0, 5.0])])
        self.assertEqual((0.5, (0.25, 1.0)), (row[1], row[3]))

    def test_runs_that_kept_the_median_run_only_have_no_range(self):
        old = cpu_case([3.0, 2.0, 5.0], [6.0, 8.0, 5.0])
        for name in ('stream', 'in-tree'):
            del old['results'][name]['cpus']
        self.assertNotIn('CPU ÷ in-tree by round', rows([old])['stream'][13])
        [row] = bench_report.cpu_ratios([old])
        self.assertEqual((0.25, None), (row[1], row[3]))


class TestWritesTable(unittest.TestCase):

    def writes_row(self, **fields):
        w = dict({'driver': 'stream', 'bandwidth': 0, 'ratio': 0.8,
                  'overwritten': 64 * 1024 ** 2, 'peak_temp': 0}, **fields)
        table = bench_report.writes_table([dict(case({}), writes=[w])])
        return [c.strip() for c in table.splitlines()[2].strip('|').split('|')]

    def test_repeated_runs_give_the_median_and_range(self):
        row = self.writes_row(ratio=0.8, ratios=[0.7, 0.8, 0.9])
        self.assertEqual('0.80 (0.70-0.90)', row[4])

    def test_one_run_gives_its_ratio(self):
        self.assertEqual('0.80', self.writes_row()[4])
