"""The reporting half of the benchmark (tools/bench.py): tables, plot, JSON.

What this holds: the markdown tables of ratios (pasteable in the README),
the plot (needs matplotlib, bench-requirements.txt; without it the rest is
written and a line says so) and ``report()``, which writes bench.json (the
run's arguments and every figure), bench.md and bench.png into --out and
prints the tables.  It works on the figures alone (``--replot`` of an
earlier run's bench.json needs no test bed).  Quote ratios of one run,
never absolute times.
"""

import json
import os

PHASES = ('plan', 'capture', 'extract', 'upload')


def timing_table(cases):
    rows = ['| disk | data | method | wall s | ÷ glance-only | ÷ in-tree | '
            'transient s | peak temp ÷ image | phases s |',
            '|---|---|---|---|---|---|---|---|---|']
    for case in cases:
        res = case['results']
        floor = res['glance-only']['wall']
        intree = res.get('in-tree', {}).get('wall')
        for name, r in res.items():
            if name == 'glance-only':
                continue
            phases = ', '.join('%s %.1f' % (p, r['phases'][p])
                               for p in PHASES if p in r['phases'])
            rows.append('| %g GiB | %s | %s | %.1f | %.2f | %s | %.2f | %.2f '
                        '| %s |'
                        % (case['size_gib'], case['kind'], name, r['wall'],
                           r['wall'] / floor,
                           '%.2f' % (r['wall'] / intree) if intree else '-',
                           r['transient'],
                           r['peak_temp'] / max(r['uploaded'] or 1, 1),
                           phases))
    return '\n'.join(rows) + '\n'


def writes_table(cases):
    rows = ['| disk | method | block_job_bandwidth | guest writes during '
            '÷ idle |', '|---|---|---|---|']
    for case in cases:
        for w in case['writes']:
            rows.append('| %g GiB | %s | %s | %.2f |'
                        % (case['size_gib'], w['driver'],
                           '%d MiB/s' % w['bandwidth'] if w['bandwidth']
                           else 'none', w['ratio']))
    return '\n'.join(rows) + '\n'


def plot(cases, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        print('matplotlib is not installed (bench-requirements.txt): no plot')
        return
    fig, (times, writes) = pyplot.subplots(2, 1, figsize=(11, 11))
    plot_times(times, cases)
    plot_writes(writes, cases)
    fig.tight_layout()
    fig.savefig(path)
    print('plot: %s' % path)


def plot_times(ax, cases):
    """Snapshot time ÷ the Glance-only floor, per case and driver."""
    labels, ratios = [], []
    for case in cases:
        floor = case['results']['glance-only']['wall']
        for name, r in case['results'].items():
            if name != 'glance-only':
                labels.append('%gG %s %s' % (case['size_gib'],
                                             case['kind'], name))
                ratios.append(r['wall'] / floor)
    ax.bar(range(len(labels)), ratios, color='tab:blue')
    ax.axhline(1.0, color='tab:red', label='Glance alone (the floor)')
    ax.axhline(1.05, color='tab:red', linestyle=':', label='target 1.05')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylabel('snapshot time ÷ Glance alone')
    ax.legend(fontsize=8)


def plot_writes(ax, cases):
    """Guest write throughput during the snapshot ÷ idle."""
    labels, ratios = [], []
    for case in cases:
        for w in case['writes']:
            labels.append('%gG %s %s' % (
                case['size_gib'], w['driver'],
                '%d MiB/s' % w['bandwidth'] if w['bandwidth'] else
                'no limit'))
            ratios.append(w['ratio'])
    ax.bar(range(len(labels)), ratios, color='tab:green')
    ax.axhline(0.70, color='tab:red', linestyle=':', label='target 0.70')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylim(0, max(ratios + [1.0]) * 1.1)
    ax.set_ylabel('guest writes: during ÷ idle')
    ax.legend(fontsize=8)


def report(cases, args):
    out = args.out
    with open(os.path.join(out, 'bench.json'), 'w') as f:
        json.dump({'args': vars(args), 'cases': cases}, f, indent=1)
    md = timing_table(cases) + '\n' + writes_table(cases)
    with open(os.path.join(out, 'bench.md'), 'w') as f:
        f.write(md)
    plot(cases, os.path.join(out, 'bench.png'))
    print(md)
