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

"""Guest networking: keeping guest traffic out of the root namespace.

The testable half of issue 15's network rule: "guest traffic stays inside
network namespaces that the minicloud creates itself; the host's root
namespace gets no address and no route in any guest subnet", and ``down``
shows that the root namespace never had one.  Each check is a pure
function over what a read-only command printed, kept apart from the thin
wrapper that runs the command:

- the root namespace's addresses and routes (``ip -j addr``, ``ip -j -4``
  and ``-6 route show table all``) and the events netwatch logged while the
  cloud ran (``ip -o -ts monitor address route``), as entries;
- the judgement: an entry naming an address or prefix that overlaps
  GUEST_NETS is a violation, whenever it was seen (a ``Deleted`` event is
  proof that the root namespace had it); the default route overlaps
  everything, so it counts only if it was not there at ``up`` (the
  baseline), and ``up`` refuses to start where anything else overlaps;
- the guard: chain GUARD_CHAIN in iptables, ip6tables and arptables, as
  the commands that install it and those that remove exactly what a
  listing shows of it;
- what ``down`` could leave behind: the cloud's namespaces and links and
  the dnsmasq and haproxy that neutron spawns, never anyone else's.

Bringing OVS, neutron's agents and the namespaces up and down is not here.
"""

import collections
import ipaddress
import json
import os
import re
import shlex
import subprocess

from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import DHCP_NETNS_PREFIX
from minicloud_lib.config import GUARD_CHAIN
from minicloud_lib.config import GUARD_INTERFACES
from minicloud_lib.config import GUEST_NETS
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import NETNS_EXT
from minicloud_lib.config import OVS_BRIDGES
from minicloud_lib.config import path
from minicloud_lib.config import STATE
from minicloud_lib.config import VETH
from minicloud_lib.processes import stray_processes


IP_ADDR = ('ip', '-j', 'addr', 'show')
# Both families explicitly: with "table all" and no family, iproute2 6.1
# lists both, but that is iproute2's choice, not a promise.
IP_ROUTES = (('ip', '-j', '-4', 'route', 'show', 'table', 'all'),
             ('ip', '-j', '-6', 'route', 'show', 'table', 'all'))
# The netwatch service: started first by ``up``, stopped last by ``down``;
# its output is log/netwatch.log.
NETWATCH = 'netwatch'
NETWATCH_CMD = ('ip', '-o', '-ts', 'monitor', 'address', 'route')
BASELINE = 'netbaseline.json'   # under run/
LINK_LOCAL = ipaddress.ip_network('fe80::/10')

# An address or a route of the root namespace, or a netwatch event.
#   key      what identifies it across listings (the baseline holds keys)
#   text     what a person reads
#   nets     the ip_networks it names (a default route's 0/0 left out)
#   default  whether it is a default route
Entry = collections.namedtuple('Entry', ['key', 'text', 'nets', 'default'])

# The route types iproute2 prints before the destination.
_ROUTE_TYPES = frozenset(['unicast', 'local', 'broadcast', 'anycast',
                          'multicast', 'blackhole', 'unreachable',
                          'prohibit', 'throw', 'nat', 'xresolve'])
_MONITOR_ADDRESS = re.compile(
    r'^\d+:\s+(?P<dev>\S+)\s+(?:inet6?|family\s+\d+)\s+(?P<local>\S+)'
    r'(?:\s+peer\s+(?P<peer>\S+))?')
_BRACKETS = re.compile(r'^\[([^\]]*)\]\s*')


def _network(text):
    """The ip_network a word of ip's output names, or None."""
    if not text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _named(*texts):
    return tuple(n for n in map(_network, texts) if n is not None)


def _address_entry(dev, local, peer=None, prefixlen=None, others=()):
    """An address: local[/prefixlen] on dev, or local peer peer/prefixlen.

    Without a peer, the prefix length is the local address's (its
    subnet is what the address claims); with one, it is the peer's.
    ``others`` are more addresses it names (broadcast, anycast).
    """
    suffix = '' if prefixlen is None else '/%s' % prefixlen
    if peer:
        shown = '%s peer %s%s' % (local, peer, suffix)
        nets = _named(local, peer + suffix, *others)
    else:
        shown = local + ('' if '/' in local else suffix)
        nets = _named(shown, *others)
    return Entry(key=('address', dev, shown),
                 text='address %s on %s' % (shown, dev),
                 nets=nets, default=False)


def address_entries(addr_json):
    """Entries for every address in ``ip -j addr`` output."""
    entries = []
    for link in json.loads(addr_json or '[]'):
        for addr in link.get('addr_info', ()):
            entries.append(_address_entry(
                link.get('ifname', '?'), addr.get('local', ''),
                addr.get('address'), addr.get('prefixlen'),
                (addr.get('broadcast'), addr.get('anycast'))))
    return entries


def _gateway(hop):
    """A route's or a nexthop's gateway: "gateway", or "via" (RTA_VIA)."""
    return hop.get('gateway') or (hop.get('via') or {}).get('host')


def _route_entry(route, text=None, words=()):
    """An entry for a route dict in the shape of ``ip -j route``.

    ``words`` are further words naming addresses (a monitor line's).
    """
    dst = route.get('dst', 'default')
    # A default route that forwards: blackhole, unreachable and the like
    # send nothing anywhere.
    default = (dst == 'default' and
               route.get('type', 'unicast') == 'unicast')
    hops = route.get('nexthops') or ()
    key = ('route', route.get('table', 'main'),
           route.get('type', 'unicast'), dst, _gateway(route) or '',
           route.get('dev', ''))
    if text is None:
        parts = [route['type']] if 'type' in route else []
        parts.append(dst)
        for word, value in (('from', route.get('from')),
                            ('via', _gateway(route)),
                            ('dev', route.get('dev')),
                            ('table', route.get('table')),
                            ('src', route.get('prefsrc'))):
            if value:
                parts += [word, value]
        for hop in hops:
            parts += ['nexthop', 'via', _gateway(hop) or '-',
                      'dev', hop.get('dev', '-')]
        text = 'route ' + ' '.join(parts)
    named = [] if default else [dst]
    named += [route.get('from'), route.get('prefsrc'), _gateway(route)]
    named += [_gateway(hop) for hop in hops] + list(words)
    return Entry(key=key, text=text, nets=_named(*named), default=default)


def route_entries(route_json):
    """Entries for every route in ``ip -j [-4|-6] route`` output."""
    return [_route_entry(r) for r in json.loads(route_json or '[]')]


def _monitor_route(words):
    """A route dict from the words of a monitor line, as ``ip -j`` has it."""
    route = {}
    if words and words[0] in _ROUTE_TYPES:
        route['type'] = words[0]
        words = words[1:]
    if words:
        route['dst'] = words[0]
    hop = None
    for i, word in enumerate(words[1:-1], start=1):
        value = words[i + 1]
        if word == 'nexthop':
            hop = {}
            route.setdefault('nexthops', []).append(hop)
        elif word == 'via':
            if value in ('inet', 'inet6') and i + 2 < len(words):
                value = words[i + 2]
            (hop if hop is not None else route)['gateway'] = value
        elif word == 'dev':
            (hop if hop is not None else route)['dev'] = value
        elif word == 'table':
            route['table'] = value
        elif word == 'src':
            route['prefsrc'] = value
        elif word == 'from':
            route['from'] = value
    return route


def netwatch_entries(lines):
    """Entries for the events ``ip -o -ts monitor address route`` logged.

    Each line is ``[<timestamp>] [Deleted ]`` then an address (``3: eth0
    inet 10.250.0.5/24 ...``) or a route (``10.250.0.0/24 dev br-ex ...``).
    A deleted address or route counts as much as an added one: the root
    namespace had it.  Every word of a line that is an address counts,
    whatever it follows, so a format this parser misreads errs towards a
    violation.
    """
    entries = []
    for line in lines:
        line = line.strip()
        rest = line
        while _BRACKETS.match(rest):   # timestamp, [nsid N], [ROUTE]
            rest = rest[_BRACKETS.match(rest).end():]
        if rest.startswith('Deleted '):
            rest = rest[len('Deleted '):]
        words = [w.rstrip('\\') for w in rest.split()]
        words = [w for w in words if w]
        if not words:
            continue
        text = 'netwatch: ' + line
        address = _MONITOR_ADDRESS.match(rest)
        if address:
            entries.append(_address_entry(
                address.group('dev'), address.group('local'),
                address.group('peer'), others=words)._replace(text=text))
        else:
            entries.append(_route_entry(_monitor_route(words), text, words))
    return entries


def overlaps(entry, guest_nets=GUEST_NETS):
    """The guest networks an entry's addresses and prefixes overlap."""
    hits = []
    for guest in map(ipaddress.ip_network, guest_nets):
        if any(net.version == guest.version and net.overlaps(guest)
               for net in entry.nets):
            hits.append(str(guest))
    return hits


def baseline(entries):
    """What ``up`` records: the keys of the root namespace's default routes.

    Nothing else is ever excused: ``up`` refuses to start where
    ``baseline_problems`` finds anything.
    """
    return [list(key) for key in sorted({e.key for e in entries
                                         if e.default})]


def baseline_problems(entries, guest_nets=GUEST_NETS):
    """Why ``up`` must refuse: what already overlaps the guest networks."""
    return ['%s overlaps %s' % (e.text, ', '.join(overlaps(e, guest_nets)))
            for e in entries if overlaps(e, guest_nets)]


def violations(entries, default_routes, guest_nets=GUEST_NETS):
    """The entries that break the rule, as sentences.

    An entry breaks it if it names an address or prefix overlapping
    ``guest_nets``, or if it is a default route whose key is not in
    ``default_routes`` (the baseline; None: not judged, no baseline).
    """
    known = None if default_routes is None else set(
        map(tuple, default_routes))
    found = []
    for entry in entries:
        hits = overlaps(entry, guest_nets)
        if hits:
            found.append('%s overlaps %s' % (entry.text, ', '.join(hits)))
        elif entry.default and known is not None and entry.key not in known:
            found.append('%s: a default route that was not there at up'
                         % entry.text)
    return found


def _matches(dev, patterns):
    """Whether dev matches one of iptables-style ``patterns`` (``tap+``)."""
    return any(dev.startswith(p[:-1]) if p.endswith('+') else dev == p
               for p in patterns)


def link_local(entries, interfaces=GUARD_INTERFACES):
    """IPv6 link-local addresses on the guest-side L2 devices.

    Not in a guest network, and the guard drops their traffic: tolerated,
    but ``down`` reports them.
    """
    return ['%s (IPv6 link-local, tolerated)' % e.text for e in entries
            if e.key[0] == 'address' and _matches(e.key[1], interfaces) and
            any(n.version == 6 and n.subnet_of(LINK_LOCAL) for n in e.nets)]


def find_violations(addr_json, route_jsons, netwatch_lines, default_routes,
                    guest_nets=GUEST_NETS):
    """The rule over the root namespace's listings and netwatch's log."""
    entries = address_entries(addr_json)
    for route_json in route_jsons:
        entries += route_entries(route_json)
    entries += netwatch_entries(netwatch_lines)
    return violations(entries, default_routes, guest_nets)


def read(cmd):
    """The output of a read-only command."""
    try:
        return subprocess.run(list(cmd), check=True, capture_output=True,
                              text=True, timeout=CALL_TIMEOUT).stdout
    except (OSError, subprocess.SubprocessError) as e:
        stderr = getattr(e, 'stderr', '') or ''
        raise MinicloudError('%s: %s %s' % (' '.join(cmd), e, stderr))


def root_ns_entries():
    """The root namespace's addresses and routes, now."""
    entries = address_entries(read(IP_ADDR))
    for cmd in IP_ROUTES:
        entries += route_entries(read(cmd))
    return entries


def take_baseline():
    """At ``up``: refuse if the root namespace overlaps, or record it."""
    entries = root_ns_entries()
    problems = baseline_problems(entries)
    if problems:
        raise MinicloudError(
            'the root network namespace already has addresses or routes '
            'in the guest networks (%s); the cloud would mix with them:\n  '
            % ', '.join(GUEST_NETS) + '\n  '.join(problems))
    with open(path('run', BASELINE), 'w') as f:
        json.dump(baseline(entries), f)


def _baseline_routes():
    try:
        with open(path('run', BASELINE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _netwatch_lines():
    try:
        with open(path('log', NETWATCH + '.log'), errors='replace') as f:
            return f.readlines()
    except FileNotFoundError:
        return []


def root_ns_violations():
    """The rule, now and over netwatch's log: [] when it held."""
    return violations(root_ns_entries() +
                      netwatch_entries(_netwatch_lines()),
                      _baseline_routes())


# (command prefix, built-in chains that jump to the guard)
_GUARD_TOOLS = (
    (('iptables', '-w'), ('INPUT', 'OUTPUT', 'FORWARD')),
    (('ip6tables', '-w'), ('INPUT', 'OUTPUT', 'FORWARD')),
    (('arptables',), ('INPUT', 'OUTPUT')),
)
# What lists each tool's filter table: ``-S`` lines, or arptables-save's
# (arptables has no -S).  Both show a user chain (``-N NAME`` or ``:NAME
# -``) and rules as ``-A CHAIN ...``.
GUARD_LISTINGS = (('iptables', '-w', '-S'), ('ip6tables', '-w', '-S'),
                  ('arptables-save',))


def guard_commands(interfaces=GUARD_INTERFACES, chain=GUARD_CHAIN):
    """The commands that install the guard, in order.

    In each of iptables, ip6tables and arptables: a chain of ours that
    drops whatever the root stack receives on or sends to ``interfaces``
    (iptables' ``+`` wildcards), filled before the built-in chains jump to
    it first thing.  arptables-nft has no FORWARD chain (ARP is forwarded
    only by bridges).
    """
    cmds = []
    for tool, hooks in _GUARD_TOOLS:
        cmds.append(list(tool) + ['-N', chain])
        for iface in interfaces:
            for option in ('-i', '-o'):
                cmds.append(list(tool) + ['-A', chain, option, iface,
                                          '-j', 'DROP'])
        for hook in hooks:
            cmds.append(list(tool) + ['-I', hook, '1', '-j', chain])
    return cmds


def guard_state(listing, chain=GUARD_CHAIN):
    """(chain exists, the ``-A`` rules of other chains that jump to it)."""
    exists, jumps = False, []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] == ['-N', chain] or line.startswith(':%s ' % chain):
            exists = True
        elif (len(words) > 2 and words[0] == '-A' and
              any(words[i] in ('-j', '--jump') and words[i + 1] == chain
                  for i in range(len(words) - 1))):
            jumps.append(words[1:])
    return exists, jumps


def guard_removal_commands(listings, chain=GUARD_CHAIN):
    """The commands that remove what ``listings`` show of the guard.

    ``listings`` are the outputs of GUARD_LISTINGS, in that order.  Only
    rules jumping to our chain are deleted (as listed), then our chain is
    flushed and deleted; nothing else is touched.
    """
    cmds = []
    for (tool, _hooks), listing in zip(_GUARD_TOOLS, listings):
        exists, jumps = guard_state(listing, chain)
        cmds += [list(tool) + ['-D'] + rule for rule in jumps]
        if exists:
            cmds += [list(tool) + ['-F', chain], list(tool) + ['-X', chain]]
    return cmds


def guard_leftovers(listings, chain=GUARD_CHAIN):
    """What ``listings`` show of the guard, as sentences."""
    left = []
    for (tool, _hooks), listing in zip(_GUARD_TOOLS, listings):
        exists, jumps = guard_state(listing, chain)
        if exists or jumps:
            left.append('%s chain %s (%d jump(s) to it)'
                        % (tool[0], chain, len(jumps)))
    return left


IP_LINKS = ('ip', '-j', '-d', 'link', 'show')
IP_NETNS = ('ip', 'netns', 'list')
_UUID = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
                   r'[0-9a-f]{12}$')


def netns_names(netns_list):
    """The names in ``ip netns list`` output (``name`` or ``name (id: 0)``)."""
    return [line.split()[0] for line in netns_list.splitlines()
            if line.strip()]


def our_netns(names, dhcp_network_ids):
    """The namespaces of ours among ``names``.

    NETNS_EXT, and neutron's qdhcp- namespace of each network whose DHCP
    directory is in our state directory (``dhcp_network_ids``): another
    neutron's qdhcp- namespaces on the host are not ours.
    """
    ours = {NETNS_EXT} | {DHCP_NETNS_PREFIX + i for i in dhcp_network_ids}
    return [name for name in names if name in ours]


# Our links in the root namespace and the kind ``ip -d`` shows for each:
# the userspace datapath's bridges and its own port are taps, the netns'
# link a veth.  A br-int of another kind (a kernel-datapath OVS) is not
# ours.
LINK_KINDS = dict([(bridge, 'tun') for bridge in OVS_BRIDGES] +
                  [('ovs-netdev', 'tun'), (VETH[0], 'veth')])


def our_links(links_json):
    """Our links in ``ip -j -d link`` output, as ``name (kind)``."""
    found = []
    for link in json.loads(links_json or '[]'):
        name = link.get('ifname')
        kind = (link.get('linkinfo') or {}).get('info_kind')
        if name in LINK_KINDS and kind == LINK_KINDS[name]:
            found.append('%s (%s)' % (name, kind))
    return found


def our_processes(procs, state=STATE):
    """dnsmasq and haproxy among (pid, command line) whose line names state.

    Neutron's DHCP agent starts them with their files under its
    state_path, which is under ours; another cloud's have other paths.
    """
    mark = state.rstrip(os.sep) + os.sep
    found = []
    for pid, cmdline in procs:
        words = cmdline.split()
        if (words and os.path.basename(words[0]) in ('dnsmasq', 'haproxy')
                and mark in cmdline):
            found.append('process %d: %s' % (pid, cmdline[:150]))
    return found


def dhcp_network_ids():
    """The networks neutron's DHCP agent kept files for under our state."""
    try:
        names = os.listdir(path('neutron', 'dhcp'))
    except FileNotFoundError:
        return []
    return [name for name in names if _UUID.match(name)]


def leftovers():
    """What of the cloud's networking is left on the host, as sentences."""
    left = ['netns %s' % name for name in our_netns(
        netns_names(read(IP_NETNS)), dhcp_network_ids())]
    left += ['link %s' % link for link in our_links(read(IP_LINKS))]
    left += our_processes(stray_processes())
    left += guard_leftovers([read(cmd) for cmd in GUARD_LISTINGS])
    return left
