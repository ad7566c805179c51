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

"""The reporting half of the benchmark (tools/bench/bench.py): tables, plot,
JSON.

What this holds: the markdown tables of ratios,
the plot (needs matplotlib, bench-requirements.txt; without it the rest is
written and a line says so) and ``report()``, which writes bench.json (the
run's arguments and every figure), bench.md, bench.rst (the same tables as
RST list-tables, which the docs include) and bench.png into --out and
prints the tables.  It works on the figures alone (``--replot`` of an
earlier run's bench.json needs no test bed).  Quote ratios of one run,
never absolute times.

Every row says its data layout: ``base`` (the data in the instance's base
image) or ``instance`` (in the instance's own qcow2 layer), see
bench_measure.py.  A bench.json from before layouts were measured has
none: its rows are ``base``, which is what it measured.

Every row says the domain's state too (``--state``): ``running`` (a live
snapshot; runs from before --state measured only this), ``shutoff`` (a
cold snapshot of the shut-off domain) or ``suspend`` (running, with
``[workarounds] disable_libvirt_livesnapshot``: nova saves the guest for
a cold snapshot and restores it; ``guest down s`` is how long the guest
was not running).  In the last two, only ``stream`` of our capture
methods runs (``methods_in_state``), and each of our rows says what ran
(``what_ran``).
"""

import json
import os
import re
import statistics

# The two floors, timing rows that are not drivers (bench_measure.py): the
# upload alone, and nova's image API calls of a snapshot alone.
GLANCE_ONLY = 'glance-only'
IMAGE_API_ONLY = 'image-API-only'
FLOORS = (GLANCE_ONLY, IMAGE_API_ONLY)
PHASES = ('plan', 'save', 'capture', 'extract', 'upload', 'stream')
# Parts of a stream's phase (bench_measure.our_phases), after the phases.
STREAM_EDGES = ('to 1st byte', 'after last')
# The targets drawn on the plot: a stream's time ÷ Glance alone, the
# guest's writes during a snapshot ÷ idle (0.70 with block_job_bandwidth,
# 0.80 during a stream), and the host's CPU ÷ nova in-tree's.
TARGET_TIME = 1.03
TARGET_WRITES_LIMITED = 0.70
TARGET_WRITES_STREAM = 0.80
# The compute host's CPU per GiB of a snapshot ÷ nova in-tree's.
TARGET_CPU = 0.50
LAYOUT_COLOURS = {'base': 'tab:blue', 'instance': 'tab:orange'}
# The domain's state during the snapshots (--state; see above).
RUNNING, SHUTOFF, SUSPEND = 'running', 'shutoff', 'suspend'
STATES = (RUNNING, SHUTOFF, SUSPEND)
# Our capture methods that mean something other than nova's way when the
# domain is shut off (or saved by nova): rebase, copy and backup are live
# capture methods; cold, each is nova's qemu-img convert, the in-tree row.
COLD_METHODS = ('stream',)


def layout(case):
    """The case's data layout; runs from before layouts measured 'base'."""
    return case.get('layout', 'base')


def state(case):
    """The domain's state; runs from before --state measured 'running'."""
    return case.get('state', RUNNING)


def methods_in_state(methods, domain_state):
    """The capture methods of ``methods`` that a ``domain_state`` run times.

    Running: all of them.  Shut off or suspended: those in COLD_METHODS.
    """
    if domain_state == RUNNING:
        return list(methods)
    return [m for m in methods if m in COLD_METHODS]


PLANNED = re.compile(
    r'Planned (\w+) snapshot \(capture method (\w+)([^)]*)\)')
LEFT_TO_NOVA = re.compile(r'Snapshot of (.*) is left to nova')


def what_ran(driver, messages):
    """What took the snapshot, from the driver's log ``messages``.

    ``driver``: 'in-tree' or 'ours'.  Ours either hands the snapshot to
    nova's code ("... is left to nova's libvirt driver", e.g. with
    [workarounds] disable_libvirt_livesnapshot) or plans its own ("Planned
    <kind> snapshot (capture method <method>[, how])", how saying e.g.
    that the guest is suspended while its disk is read); a cold 'rebase'
    is nova's way, qemu-img convert then upload, run by our driver.  None
    if the log says neither.
    """
    if driver == 'in-tree':
        return 'nova in-tree'
    for message in messages:
        left = LEFT_TO_NOVA.search(message)
        if left:
            return 'ours, left to nova\'s code (%s)' % left.group(1)
    for message in messages:
        planned = PLANNED.search(message)
        if planned:
            kind, method, how = planned.groups()
            if kind == 'cold' and method == 'rebase':
                method = 'qemu-img convert'
            return 'ours, %s %s%s' % (kind, method, how)
    return None


def mib(nbytes):
    return '-' if nbytes is None else '%.0f' % (nbytes / 1024 ** 2)


def cpu_text(result):
    """'; cpu s glance G, qemu Q, ours O' of a run, if it was measured."""
    cpu = result.get('cpu')
    if not cpu:
        return ''  # runs from before CPU seconds were measured
    return '; cpu s ' + ', '.join('%s %.1f' % (who, cpu[who])
                                  for who in ('glance', 'qemu', 'ours')
                                  if who in cpu)


def host_cpu_per_gib(result, size_gib):
    """Compute-host CPU seconds per GiB of disk, or '-' if not measured.

    ``host`` (bench_cpu.CpuMeter) counts the instance's QEMU, the
    bench's process and its children; runs from before it was measured
    left the children (nova in-tree's qemu-img convert) out, so they get
    no figure.
    """
    host = (result.get('cpu') or {}).get('host')
    return '-' if host is None else '%.2f' % (host / size_gib)


def cpu_by_round(result, intree):
    """Each round's host CPU ÷ nova in-tree's of the same round, or [].

    Rounds run each driver in turn (bench_measure.timing_runs), so run i
    of one and of in-tree are next to each other.  Runs from before every
    run's CPU was kept (``cpus``) have only the median run's: [].
    """
    ours = [c.get('host') for c in (result or {}).get('cpus', ())]
    theirs = [c.get('host') for c in (intree or {}).get('cpus', ())]
    if None in ours + theirs:
        return []
    return side_by_side_ratios(ours, theirs)


def paired_ratios(walls, floor_walls):
    """Each run ÷ the floor uploads near it; [] if they do not pair.

    A floor is uploaded after the first snapshot and after every round
    (bench_measure.timing_runs), so round i of a driver comes between
    floor uploads i and i + 1 (the first driver's first run just before
    upload 0); each run ÷ the mean of those two lessens what drifts
    slowly over a run (not the noise of single uploads).  Runs that kept
    no floor walls do not pair.
    """
    if len(floor_walls) != len(walls) + 1:
        return []
    return [w * 2 / (floor_walls[i] + floor_walls[i + 1])
            for i, w in enumerate(walls)]


def spread(ratios):
    """'median (lowest-highest)' of two ratios or more, else ''."""
    if len(ratios) < 2:
        return ''
    ratios = sorted(ratios)
    return '%.2f (%.2f-%.2f)' % (statistics.median(ratios), ratios[0],
                                 ratios[-1])


def paired(walls, floor_walls):
    """spread() of paired_ratios(): '' with one round."""
    return spread(paired_ratios(walls, floor_walls))


def side_by_side_ratios(walls, floor_walls):
    """Each of ``walls`` ÷ the one of ``floor_walls`` next to it, or [].

    The two floors upload one after the other, and each round runs every
    driver in turn (bench_measure.timing_runs), so upload i of one floor
    is next to upload i of the other, and run i of a driver next to run i
    of nova in-tree.
    """
    if len(walls) != len(floor_walls):
        return []
    return [w / f for w, f in zip(walls, floor_walls)]


def seconds(value):
    return '-' if value is None else '%.2f' % value


def timing_table(cases):
    rows = ['| disk | data | layout | state | method | wall s '
            '| ÷ glance-only | ÷ image API | ÷ in-tree | transient s '
            '| guest down s | peak temp ÷ image | host CPU s/GiB | phases s |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for case in cases:
        res = case['results']
        floor = res[GLANCE_ONLY]['wall']
        # Runs from before the image-API floor was measured have none.
        api = res.get(IMAGE_API_ONLY, {}).get('wall')
        intree = res.get('in-tree', {}).get('wall')

        def ratio(wall, to):
            return '%.2f' % (wall / to) if to else '-'

        for name, r in res.items():
            if name in FLOORS:
                continue
            phases = ', '.join('%s %.1f' % (p, r['phases'][p])
                               for p in PHASES + STREAM_EDGES
                               if p in r['phases'])
            if r.get('ran'):
                phases = 'ran: %s; %s' % (r['ran'], phases)
            if len(r.get('downs', ())) > 1:
                phases += '; down ' + ', '.join('%.2f' % d
                                                for d in r['downs'])
            if len(r.get('walls', ())) > 1:
                # --repeat: the wall is the median; phases of that run.
                phases += '; runs ' + ', '.join('%.1f' % w
                                                for w in r['walls'])
            # The read alone makes no image-API call: ÷ the image-API
            # floor means nothing for it.
            for floor_name in FLOORS if r['uploaded'] else (GLANCE_ONLY,):
                ratios = paired(r.get('walls', ()),
                                res.get(floor_name, {}).get('walls', ()))
                if ratios:
                    phases += '; paired ÷ %s %s' % (floor_name, ratios)
            if name != 'in-tree':
                ratios = spread(side_by_side_ratios(
                    r.get('walls', ()),
                    res.get('in-tree', {}).get('walls', ())))
                if ratios:
                    phases += '; ÷ in-tree by round %s' % ratios
                ratios = spread(cpu_by_round(r, res.get('in-tree')))
                if ratios:
                    phases += '; host CPU ÷ in-tree by round %s' % ratios
            phases += cpu_text(r)
            rows.append('| %g GiB | %s | %s | %s | %s | %.1f | %.2f | %s '
                        '| %s | %.2f | %s | %s | %s | %s |'
                        % (case['size_gib'], case['kind'], layout(case),
                           state(case), name, r['wall'],
                           r['wall'] / floor,
                           ratio(r['wall'], api if r['uploaded'] else None),
                           ratio(r['wall'], intree),
                           r['transient'], seconds(r.get('down')),
                           # Nothing uploaded: the read-alone row.
                           '%.2f' % (r['peak_temp'] / r['uploaded'])
                           if r['uploaded'] else '-',
                           host_cpu_per_gib(r, case['size_gib']),
                           phases))
        for name in FLOORS:
            walls = res.get(name, {}).get('walls')
            if not walls:
                # Runs from before glance-only was measured twice have
                # no walls (it is their median); from before the
                # image-API floor, none of it.
                continue
            wall = res[name]['wall']
            uploads = ', '.join('%.1f' % w for w in walls)
            if name == IMAGE_API_ONLY:
                ratios = spread(side_by_side_ratios(
                    walls, res[GLANCE_ONLY]['walls']))
                if ratios:
                    uploads += '; side by side ÷ %s %s' % (GLANCE_ONLY,
                                                           ratios)
            rows.append('| %g GiB | %s | %s | %s | %s | %.1f | %.2f | %s '
                        '| %s | - | - | - | %s | uploads %s%s |'
                        % (case['size_gib'], case['kind'], layout(case),
                           state(case), name, wall, wall / floor,
                           ratio(wall, api),
                           ratio(wall, intree),
                           host_cpu_per_gib(res[name], case['size_gib']),
                           uploads, cpu_text(res[name])))
    return '\n'.join(rows) + '\n'


def writes_table(cases):
    rows = ['| disk | layout | method | block_job_bandwidth | guest writes '
            'during ÷ idle | guest overwrote MiB | peak temp MiB |',
            '|---|---|---|---|---|---|---|']
    for case in cases:
        for w in case['writes']:
            # --repeat: the median, then every run's range.
            ratio = spread(w.get('ratios', ())) or '%.2f' % w['ratio']
            rows.append('| %g GiB | %s | %s | %s | %s | %s | %s |'
                        % (case['size_gib'], layout(case), w['driver'],
                           '%d MiB/s' % w['bandwidth'] if w['bandwidth']
                           else 'none', ratio,
                           mib(w.get('overwritten')),
                           mib(w.get('peak_temp'))))
    return '\n'.join(rows) + '\n'


def rst_table(md):
    """A markdown table of timing_table/writes_table as an RST list-table.

    The docs include bench.rst, so their tables are the run's figures as
    written, not copied by hand.
    """
    lines = [line for line in md.splitlines() if line.startswith('|')]
    rows = [[cell.strip() for cell in line.strip('|').split('|')]
            for line in lines if not line.startswith('|---')]
    # A cell "-" (no figure) would start a bullet list: escape it.
    rows = [['\\-' if cell == '-' else cell for cell in row] for row in rows]
    out = ['.. list-table::', '   :header-rows: 1', '']
    for row in rows:
        out.append('   * - %s' % row[0])
        out.extend('     - %s' % cell for cell in row[1:])
    return '\n'.join(out) + '\n'


def plot(cases, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        print('matplotlib is not installed (bench-requirements.txt): no plot')
        return
    fig, (times, cpu, writes) = pyplot.subplots(3, 1, figsize=(14, 16))
    plot_times(times, cases)
    plot_cpu(cpu, cases)
    plot_writes(writes, cases)
    fig.tight_layout()
    fig.savefig(path)
    print('plot: %s' % path)


def plot_times(ax, cases):
    """Snapshot time ÷ the Glance-only floor, per case and driver."""
    labels, ratios, colours = [], [], []
    for case in cases:
        floor = case['results'][GLANCE_ONLY]['wall']
        for name, r in case['results'].items():
            if name not in FLOORS:
                labels.append('%gG %s %s %s %s' % (
                    case['size_gib'], case['kind'], layout(case),
                    state(case), name))
                ratios.append(r['wall'] / floor)
                colours.append(LAYOUT_COLOURS[layout(case)])
    ax.bar(range(len(labels)), ratios, color=colours)
    ax.axhline(1.0, color='tab:red', label='Glance alone (the floor)')
    ax.axhline(TARGET_TIME, color='tab:red', linestyle=':',
               label='target %.2f' % TARGET_TIME)
    legend_layouts(ax, cases)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylabel('snapshot time ÷ Glance alone')
    ax.legend(fontsize=8)


def cpu_ratios(cases):
    """(label, host CPU ÷ nova in-tree's, layout, range) of snapshot rows.

    The ratio is the median of the rounds' (``cpu_by_round``) and the
    range their lowest and highest; runs that kept only the median run's
    CPU give that run's ratio and no range (None).  Rows of cases with no
    in-tree row, or no CPU figures (runs before the CPU was measured
    whole), are left out.
    """
    rows = []
    for case in cases:
        intree = case['results'].get('in-tree') or {}
        if not (intree.get('cpu') or {}).get('host'):
            continue
        for name, r in case['results'].items():
            if name in FLOORS or name == 'in-tree' or not r.get('cpu'):
                continue
            label = '%gG %s %s %s %s' % (case['size_gib'], case['kind'],
                                         layout(case), state(case), name)
            rounds = cpu_by_round(r, intree)
            if rounds:
                rows.append((label, statistics.median(rounds), layout(case),
                             (min(rounds), max(rounds))))
            else:
                rows.append((label, r['cpu']['host'] / intree['cpu']['host'],
                             layout(case), None))
    return rows


def plot_cpu(ax, cases):
    """The compute host's CPU per snapshot ÷ nova in-tree's, same case.

    With --repeat, each bar is the median of the rounds' ratios and its
    whisker their range.
    """
    rows = cpu_ratios(cases)
    ax.bar(range(len(rows)), [r[1] for r in rows],
           color=[LAYOUT_COLOURS[r[2]] for r in rows])
    for x, (_label, ratio, _layout, span) in enumerate(rows):
        if span:
            whisker(ax, x, ratio, *span)
    ax.axhline(1.0, color='tab:grey', label='nova in-tree')
    ax.axhline(TARGET_CPU, color='tab:red', linestyle=':',
               label='target %.2f' % TARGET_CPU)
    legend_layouts(ax, cases)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], fontsize=7, rotation=90)
    ax.set_ylabel('host CPU ÷ nova in-tree (QEMU + driver, Glance apart)')
    ax.legend(fontsize=8)


def whisker(ax, x, value, low, high):
    """The range low-high of bar ``x``, whose height is ``value``."""
    ax.errorbar([x], [value], yerr=[[value - low], [high - value]],
                color='black', capsize=3)


def legend_layouts(ax, cases):
    """Empty bars that name the colour of each layout in the legend."""
    for name in sorted({layout(case) for case in cases}):
        ax.bar([0], [0], width=0, color=LAYOUT_COLOURS[name],
               label='data in the %s layer' % name)


def plot_writes(ax, cases):
    """Guest write throughput during the snapshot ÷ idle."""
    labels, ratios, colours = [], [], []
    for case in cases:
        for w in case['writes']:
            labels.append('%gG %s %s %s' % (
                case['size_gib'], layout(case), w['driver'],
                '%d MiB/s' % w['bandwidth'] if w['bandwidth'] else
                'no limit'))
            ratios.append(w['ratio'])
            colours.append(LAYOUT_COLOURS[layout(case)])
    ax.bar(range(len(labels)), ratios, color=colours)
    # --repeat: each bar the median, its whisker every run's range.
    for x, w in enumerate(w for case in cases for w in case['writes']):
        if len(w.get('ratios', ())) > 1:
            whisker(ax, x, w['ratio'], min(w['ratios']), max(w['ratios']))
    ax.axhline(TARGET_WRITES_LIMITED, color='tab:red', linestyle=':',
               label='target %.2f (with block_job_bandwidth)'
               % TARGET_WRITES_LIMITED)
    ax.axhline(TARGET_WRITES_STREAM, color='tab:purple', linestyle=':',
               label='target %.2f (stream, no limit)' % TARGET_WRITES_STREAM)
    legend_layouts(ax, [case for case in cases if case['writes']])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylim(0, max(ratios + [1.0]) * 1.1)
    ax.set_ylabel('guest writes: during ÷ idle')
    ax.legend(fontsize=8)


def pinning_note(args):
    """A paragraph saying where the run pinned Glance, if it did."""
    cpu = getattr(args, 'pin_glance', None)  # None in runs before it
    algo = getattr(args, 'glance_hash', None) or 'sha512'
    note = ''
    if cpu is not None:
        note += ('Pinned (--pin-glance %d): glance-api on CPU %d alone; '
                 'the bench, QEMU and libvirtd on the others.\n\n'
                 % (cpu, cpu))
    if algo != 'sha512':
        note += ('Glance\'s hashing_algorithm is %s (--glance-hash), not '
                 'its default sha512: a stream hashes its upload with it.'
                 '\n\n' % algo)
    return note


def state_note(cases):
    """A paragraph per domain state other than running that the run has."""
    notes = {
        SHUTOFF: (
            'State shutoff: the domain is shut off before the timed '
            'snapshots (libvirt\'s graceful destroy: QEMU, sent SIGTERM, '
            'flushes and closes the disk; the test guest, idle, writes '
            'nothing and has no ACPI handler) and stays shut off; every '
            'snapshot is of the shut-off domain.  Ours is [snapdriver] '
            'capture_method = stream: its cold path reads the disk with '
            'qemu-nbd straight into Glance ("ran" says whether it did).  '
            'rebase, copy and backup are left out: they are live capture '
            'methods, and cold each is nova\'s qemu-img convert into a '
            'temp image, then the upload: the in-tree row.  No QEMU runs: '
            'host CPU is the bench and its children (qemu-nbd, qemu-img).'
        ),
        SUSPEND: (
            'State suspend: the domain runs, and [workarounds] '
            'disable_libvirt_livesnapshot = True: nova saves the guest '
            '(managed save: its RAM to libvirt\'s save directory, not in '
            'peak temp), snapshots the disk cold and starts the guest '
            'again.  guest down s: how long the domain was not running '
            'during the snapshot (its state polled every 10 ms); "ran" '
            'says whose code took the snapshot.  Only stream of our '
            'methods runs; rebase, copy and backup are live capture '
            'methods.  The QEMU that a save ends is counted up to its '
            'last poll; libvirtd\'s own work (writing and reading the '
            'saved RAM) is not counted.'
        ),
    }
    present = [s for s in STATES if s in {state(case) for case in cases}]
    return ''.join(notes[s] + '\n\n' for s in present if s in notes)


def save_json(cases, args):
    """bench.json in --out: the arguments and every case measured so far."""
    path = os.path.join(args.out, 'bench.json')
    with open(path + '.new', 'w') as f:
        json.dump({'args': vars(args), 'cases': cases}, f, indent=1)
    os.replace(path + '.new', path)


def report(cases, args):
    out = args.out
    save_json(cases, args)
    timings, writes = timing_table(cases), writes_table(cases)
    notes = pinning_note(args) + state_note(cases)
    md = notes + timings + '\n' + writes
    with open(os.path.join(out, 'bench.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(out, 'bench.rst'), 'w') as f:
        f.write('.. Written by tools/bench/bench_report.py from '
                'bench.json.\n\n' + notes + 'Snapshot times\n\n'
                + rst_table(timings))
        if any(case['writes'] for case in cases):
            # --write-seconds 0: no rows, and RST has no empty tables.
            f.write('\nGuest writes during a snapshot\n\n' +
                    rst_table(writes))
    plot(cases, os.path.join(out, 'bench.png'))
    print(md)
