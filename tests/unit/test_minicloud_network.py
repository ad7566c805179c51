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

"""minicloud network containment: the pure checks of
tools/minicloud/minicloud_lib.

tools/ is not a package: like tests/e2e/conftest.py, this module puts it on
sys.path (appended, so that nothing there shadows an installed module) and
imports minicloud_lib.network, which needs only the standard library.  The
tests use unittest, not tests.unit.base, so that they run without nova:
``python3 -m pytest tests/unit/test_minicloud_network.py`` as well as in
tox's unit tier.

HOST_* are verbatim outputs of this project's CI machine (iproute2 6.1):
eth0 192.0.2.2/24 and fd00::2/64, default routes via 192.0.2.1 and
fd00::1.  The cloud's listings and netwatch lines are built in the shapes
iproute2 6.1 prints (ip/ipaddress.c print_addrinfo, ip/iproute.c
print_route, lib/utils.c print_timestamp for ``-ts``).
"""

import json
import os
import tempfile
import unittest
from unittest import mock

from minicloud_lib import network

# ip -j addr show
HOST_ADDR = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"'
    'mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"defaul'
    't","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:'
    '00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet",'
    '"local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","val'
    'id_life_time":4294967295,"preferred_life_time":4294967295},{"famil'
    'y":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_lif'
    'e_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":'
    '2,"ifname":"ifb0","flags":["BROADCAST","NOARP"],"mtu":1500,"qdisc"'
    ':"noop","operstate":"DOWN","group":"default","txqlen":32,"link_typ'
    'e":"ether","address":"c2:b2:fe:c5:cf:20","broadcast":"ff:ff:ff:ff:'
    'ff:ff","addr_info":[]},{"ifindex":3,"ifname":"ifb1","flags":["BROA'
    'DCAST","NOARP"],"mtu":1500,"qdisc":"noop","operstate":"DOWN","grou'
    'p":"default","txqlen":32,"link_type":"ether","address":"36:28:8c:2'
    '7:f7:76","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[]},{"ifindex'
    '":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_U'
    'P"],"mtu":1400,"qdisc":"pfifo_fast","operstate":"UP","group":"defa'
    'ult","txqlen":1000,"link_type":"ether","address":"02:fc:00:00:00:0'
    '1","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","'
    'local":"192.0.2.2","prefixlen":24,"broadcast":"192.0.2.255","scope'
    '":"global","label":"eth0","valid_life_time":4294967295,"preferred_'
    'life_time":4294967295},{"family":"inet6","local":"fd00::2","prefix'
    'len":64,"scope":"global","nodad":true,"valid_life_time":4294967295'
    ',"preferred_life_time":4294967295},{"family":"inet6","local":"fe80'
    '::fc:ff:fe00:1","prefixlen":64,"scope":"link","valid_life_time":42'
    '94967295,"preferred_life_time":4294967295}]}]'
)

# ip -j -4 route show table all
HOST_ROUTES4 = (
    '[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},{'
    '"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"lin'
    'k","prefsrc":"192.0.2.2","flags":[]},{"type":"local","dst":"127.0.'
    '0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"hos'
    't","prefsrc":"127.0.0.1","flags":[]},{"type":"local","dst":"127.0.'
    '0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host"'
    ',"prefsrc":"127.0.0.1","flags":[]},{"type":"broadcast","dst":"127.'
    '255.255.255","dev":"lo","table":"local","protocol":"kernel","scope'
    '":"link","prefsrc":"127.0.0.1","flags":[]},{"type":"local","dst":"'
    '192.0.2.2","dev":"eth0","table":"local","protocol":"kernel","scope'
    '":"host","prefsrc":"192.0.2.2","flags":[]},{"type":"broadcast","ds'
    't":"192.0.2.255","dev":"eth0","table":"local","protocol":"kernel",'
    '"scope":"link","prefsrc":"192.0.2.2","flags":[]}]'
)

# ip -j -6 route show table all
HOST_ROUTES6 = (
    '[{"dst":"fd00::/64","dev":"eth0","protocol":"kernel","metric":256,'
    '"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"eth0","proto'
    'col":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"def'
    'ault","gateway":"fd00::1","dev":"eth0","metric":1024,"flags":[],"p'
    'ref":"medium"},{"type":"local","dst":"::1","dev":"lo","table":"loc'
    'al","protocol":"kernel","metric":0,"flags":[],"pref":"medium"},{"t'
    'ype":"local","dst":"fd00::2","dev":"eth0","table":"local","protoco'
    'l":"kernel","metric":0,"flags":[],"pref":"medium"},{"type":"local"'
    ',"dst":"fe80::fc:ff:fe00:1","dev":"eth0","table":"local","protocol'
    '":"kernel","metric":0,"flags":[],"pref":"medium"},{"type":"multica'
    'st","dst":"ff00::/8","dev":"eth0","table":"local","protocol":"kern'
    'el","metric":256,"flags":[],"pref":"medium"}]'
)

# ip -j -d link show dev eth0
HOST_LINKS = (
    '[{"ifindex":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP'
    '","LOWER_UP"],"mtu":1400,"qdisc":"pfifo_fast","operstate":"UP","li'
    'nkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"eth'
    'er","address":"02:fc:00:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff",'
    '"promiscuity":0,"allmulti":0,"min_mtu":68,"max_mtu":65535,"inet6_a'
    'ddr_gen_mode":"eui64","num_tx_queues":1,"num_rx_queues":1,"gso_max'
    '_size":65536,"gso_max_segs":65535,"tso_max_size":65536,"tso_max_se'
    'gs":65535,"gro_max_size":65536,"parentbus":"virtio","parentdev":"v'
    'irtio2"}]'
)


PROVIDER = '10.250.0.0/24'
METADATA = '169.254.169.254/32'
TS = '[2026-11-30T11:00:00.123456] '
STATE = '/var/tmp/nova-snapdriver-minicloud'
NET_ID = '6f1e4c2a-8d3b-4e7f-9a21-0c5d7b3e9f10'
OTHER_ID = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'


def addr_json(ifname, *addrs):
    """``ip -j addr`` of one link: (family, local, prefixlen[, peer])."""
    info = []
    for addr in addrs:
        entry = {'family': addr[0], 'local': addr[1], 'prefixlen': addr[2],
                 'scope': 'global', 'valid_life_time': 4294967295,
                 'preferred_life_time': 4294967295}
        if len(addr) > 3:
            entry['address'] = addr[3]
        info.append(entry)
    return json.dumps([{'ifindex': 7, 'ifname': ifname,
                        'flags': ['BROADCAST', 'MULTICAST', 'UP'],
                        'mtu': 1500, 'addr_info': info}])


def routes_json(*routes):
    """``ip -j route`` of route dicts (flags added as ip prints them)."""
    return json.dumps([dict(route, flags=[]) for route in routes])


def violations(addr='[]', routes=(), lines=(), baseline=None):
    """find_violations, the host's baseline unless another is given."""
    if baseline is None:
        baseline = HOST_BASELINE
    return network.find_violations(addr, list(routes), list(lines),
                                   baseline, (PROVIDER, METADATA))


def host_entries():
    return (network.address_entries(HOST_ADDR) +
            network.route_entries(HOST_ROUTES4) +
            network.route_entries(HOST_ROUTES6))


HOST_BASELINE = [['route', 'main', 'unicast', 'default', '192.0.2.1', 'eth0'],
                 ['route', 'main', 'unicast', 'default', 'fd00::1', 'eth0']]


class HostTestCase(unittest.TestCase):
    """The machine as it is: nothing of it counts."""

    def test_the_baseline_is_the_two_default_routes(self):
        self.assertEqual(HOST_BASELINE, network.baseline(host_entries()))

    def test_up_finds_nothing_to_refuse(self):
        self.assertEqual(
            [], network.baseline_problems(host_entries(),
                                          (PROVIDER, METADATA)))

    def test_the_host_is_no_violation(self):
        self.assertEqual([], violations(HOST_ADDR,
                                        [HOST_ROUTES4, HOST_ROUTES6]))

    def test_the_baseline_survives_json(self):
        stored = json.loads(json.dumps(network.baseline(host_entries())))
        self.assertEqual([], violations(HOST_ADDR,
                                        [HOST_ROUTES4, HOST_ROUTES6],
                                        baseline=stored))

    def test_default_routes_not_in_the_baseline_count(self):
        found = violations(HOST_ADDR, [HOST_ROUTES4, HOST_ROUTES6],
                           baseline=[])
        self.assertEqual(
            ['route default via 192.0.2.1 dev eth0: a default route that '
             'was not there at up',
             'route default via fd00::1 dev eth0: a default route that '
             'was not there at up'], found)

    def test_without_a_baseline_default_routes_are_not_judged(self):
        entries = host_entries()
        self.assertEqual([], network.violations(entries, None))

    def test_the_host_parses_into_its_addresses_and_routes(self):
        texts = [e.text for e in host_entries()]
        self.assertIn('address 192.0.2.2/24 on eth0', texts)
        self.assertIn('address fd00::2/64 on eth0', texts)
        self.assertIn('route local 192.0.2.2 dev eth0 table local '
                      'src 192.0.2.2', texts)
        self.assertEqual(5 + 7 + 7, len(texts))

    def test_the_hosts_own_link_local_address_is_not_reported(self):
        self.assertEqual([], network.link_local(host_entries()))


class AddressTestCase(unittest.TestCase):

    def assertViolates(self, addr, overlapped):
        found = violations(addr)
        self.assertEqual(1, len(found), found)
        self.assertTrue(found[0].endswith('overlaps ' + overlapped),
                        found[0])

    def test_an_address_in_the_provider_network(self):
        self.assertViolates(addr_json('br-ex', ('inet', '10.250.0.5', 24)),
                            PROVIDER)

    def test_a_host_address_at_the_edges_of_the_provider_network(self):
        for local in ('10.250.0.0', '10.250.0.255'):
            self.assertViolates(addr_json('lo', ('inet', local, 32)),
                                PROVIDER)

    def test_an_address_whose_subnet_contains_the_provider_network(self):
        self.assertViolates(addr_json('eth1', ('inet', '10.1.2.3', 8)),
                            PROVIDER)

    def test_an_address_whose_subnet_lies_inside_it(self):
        self.assertViolates(addr_json('eth1', ('inet', '10.250.0.130', 25)),
                            PROVIDER)

    def test_the_metadata_address(self):
        self.assertViolates(addr_json('lo', ('inet', '169.254.169.254', 32)),
                            METADATA)

    def test_a_link_local_ipv4_subnet_holds_the_metadata_address(self):
        self.assertViolates(addr_json('eth1', ('inet', '169.254.3.4', 16)),
                            METADATA)

    def test_a_peer_in_the_provider_network(self):
        self.assertViolates(
            addr_json('tun0', ('inet', '192.0.2.9', 32, '10.250.0.9')),
            PROVIDER)

    def test_a_broadcast_address_in_the_provider_network(self):
        addr = json.loads(addr_json('eth1', ('inet', '192.0.2.9', 24)))
        addr[0]['addr_info'][0]['broadcast'] = '10.250.0.255'
        self.assertViolates(json.dumps(addr), PROVIDER)

    def test_neighbours_of_the_guest_networks_do_not_count(self):
        addr = addr_json('eth1', ('inet', '10.250.1.1', 24),
                         ('inet', '10.249.255.255', 32),
                         ('inet', '169.254.169.253', 32),
                         ('inet', '169.254.169.255', 32),
                         ('inet6', 'fd00::10', 64))
        self.assertEqual([], violations(addr))

    def test_ipv6_addresses_never_overlap_ipv4_networks(self):
        addr = addr_json('eth1', ('inet6', '::', 0),
                         ('inet6', '::a:fa00:5', 96),
                         ('inet6', '::ffff:10.250.0.5', 128))
        self.assertEqual([], violations(addr))

    def test_link_local_on_the_guest_side_is_tolerated_and_reported(self):
        entries = network.address_entries(addr_json(
            'tap6f1e4c2a-8d', ('inet6', 'fe80::fc16:3eff:fe6b:1a2c', 64)))
        entries += network.address_entries(addr_json(
            'eth1', ('inet6', 'fe80::1', 64)))
        self.assertEqual([], network.violations(entries, HOST_BASELINE))
        self.assertEqual(
            ['address fe80::fc16:3eff:fe6b:1a2c/64 on tap6f1e4c2a-8d '
             '(IPv6 link-local, tolerated)'], network.link_local(entries))


class RouteTestCase(unittest.TestCase):

    def assertViolates(self, route, overlapped=PROVIDER):
        found = violations(routes=[routes_json(route)])
        self.assertEqual(1, len(found), found)
        self.assertTrue(found[0].endswith('overlaps ' + overlapped),
                        found[0])

    def test_the_provider_network(self):
        self.assertViolates({'dst': PROVIDER, 'dev': 'br-ex',
                             'protocol': 'kernel', 'scope': 'link',
                             'prefsrc': '10.250.0.5'})

    def test_a_supernet(self):
        self.assertViolates({'dst': '10.0.0.0/8', 'gateway': '192.0.2.1',
                             'dev': 'eth0'})

    def test_half_of_everything_is_no_default_route(self):
        self.assertViolates({'dst': '0.0.0.0/1', 'gateway': '192.0.2.1',
                             'dev': 'eth0'})

    def test_a_host_route_printed_without_its_prefix_length(self):
        self.assertViolates({'dst': '10.250.0.7', 'dev': 'br-ex',
                             'scope': 'link'})

    def test_local_and_broadcast_routes_of_the_local_table(self):
        for kind, dst in (('local', '10.250.0.5'),
                          ('broadcast', '10.250.0.255')):
            self.assertViolates({'type': kind, 'dst': dst, 'dev': 'br-ex',
                                 'table': 'local', 'protocol': 'kernel',
                                 'scope': 'host', 'prefsrc': '10.250.0.5'})

    def test_blackhole_and_unreachable_routes_are_routes(self):
        for kind in ('blackhole', 'unreachable'):
            self.assertViolates({'type': kind, 'dst': PROVIDER})

    def test_the_metadata_host_route(self):
        self.assertViolates({'dst': '169.254.169.254',
                             'gateway': '10.250.0.2', 'dev': 'br-ex'},
                            PROVIDER + ', ' + METADATA)

    def test_a_zeroconf_route_holds_the_metadata_address(self):
        self.assertViolates({'dst': '169.254.0.0/16', 'dev': 'eth0',
                             'scope': 'link', 'metric': 1000}, METADATA)

    def test_a_guest_gateway_for_another_network(self):
        self.assertViolates({'dst': '198.51.100.0/24',
                             'gateway': '10.250.0.1', 'dev': 'br-ex'})

    def test_a_guest_source_address_for_another_network(self):
        self.assertViolates({'dst': '198.51.100.0/24', 'dev': 'br-ex',
                             'prefsrc': '10.250.0.9'})

    def test_a_guest_gateway_as_rta_via(self):
        self.assertViolates({'dst': '198.51.100.0/24', 'dev': 'br-ex',
                             'via': {'family': 'inet',
                                     'host': '10.250.0.1'}})

    def test_a_guest_gateway_among_multipath_nexthops(self):
        self.assertViolates({'dst': '198.51.100.0/24', 'protocol': 'static',
                             'nexthops': [
                                 {'gateway': '192.0.2.1', 'dev': 'eth0',
                                  'weight': 1, 'flags': []},
                                 {'gateway': '10.250.0.1', 'dev': 'br-ex',
                                  'weight': 1, 'flags': []}]})

    def test_a_default_route_through_a_guest_gateway(self):
        route = {'dst': 'default', 'gateway': '10.250.0.1', 'dev': 'br-ex'}
        self.assertViolates(route)
        entries = network.route_entries(routes_json(route))
        self.assertEqual(1, len(network.baseline_problems(entries)))
        # Not even a baseline that lists it excuses it.
        self.assertEqual(1, len(network.violations(
            entries, network.baseline(entries))))

    def test_a_new_default_route_without_a_gateway(self):
        found = violations(routes=[routes_json(
            {'dst': 'default', 'dev': 'snapext0', 'scope': 'link'})])
        self.assertEqual(['route default dev snapext0: a default route '
                          'that was not there at up'], found)

    def test_the_hosts_default_route_with_other_volatile_fields(self):
        self.assertEqual([], violations(routes=[routes_json(
            {'dst': 'default', 'gateway': '192.0.2.1', 'dev': 'eth0',
             'protocol': 'dhcp', 'prefsrc': '192.0.2.2', 'metric': 100})]))

    def test_the_same_gateway_in_another_table_is_another_route(self):
        self.assertEqual(1, len(violations(routes=[routes_json(
            {'dst': 'default', 'gateway': '192.0.2.1', 'dev': 'eth0',
             'table': '100'})])))

    def test_ipv6_routes_of_the_guest_side_do_not_count(self):
        routes = routes_json(
            {'dst': 'fe80::/64', 'dev': 'tap6f1e4c2a-8d',
             'protocol': 'kernel', 'metric': 256, 'pref': 'medium'},
            {'type': 'multicast', 'dst': 'ff00::/8', 'dev': 'tap6f1e4c2a-8d',
             'table': 'local', 'protocol': 'kernel', 'metric': 256,
             'pref': 'medium'},
            {'dst': '::/1', 'gateway': 'fd00::1', 'dev': 'eth0'})
        self.assertEqual([], violations(routes=[routes]))

    def test_ipv6_guest_networks_are_judged_too(self):
        entries = network.route_entries(routes_json(
            {'dst': 'fd42::/48', 'dev': 'br-ex'},
            {'dst': 'fd43::/64', 'dev': 'br-ex'},
            {'dst': '10.250.0.0/24', 'dev': 'br-ex'}))
        self.assertEqual(
            ['route fd42::/48 dev br-ex overlaps fd42:0:0:1::/64'],
            network.violations(entries, [], ('fd42:0:0:1::/64',)))


def watch(*events):
    return [TS + event + '\n' for event in events]


class NetwatchTestCase(unittest.TestCase):

    def assertCaught(self, *events, count=None):
        found = violations(lines=watch(*events))
        self.assertEqual(count or len(events), len(found), found)
        for sentence in found:
            self.assertTrue(sentence.startswith('netwatch: ' + TS.strip()),
                            sentence)
        return found

    def test_an_address_added_and_deleted(self):
        found = self.assertCaught(
            '7: br-ex    inet 10.250.0.5/24 brd 10.250.0.255 scope global '
            'br-ex\\       valid_lft forever preferred_lft forever',
            'Deleted 7: br-ex    inet 10.250.0.5/24 brd 10.250.0.255 scope '
            'global br-ex\\       valid_lft forever preferred_lft forever')
        self.assertIn('Deleted 7: br-ex    inet 10.250.0.5/24', found[1])
        self.assertTrue(found[1].endswith('overlaps ' + PROVIDER))

    def test_a_peer_address(self):
        self.assertCaught('9: tun0    inet 192.0.2.9 peer 10.250.0.9/32 '
                          'scope global tun0\\       valid_lft forever '
                          'preferred_lft forever')

    def test_a_broadcast_address(self):
        self.assertCaught('8: eth1    inet 192.0.2.9/24 brd 10.250.0.255 '
                          'scope global eth1\\       valid_lft forever '
                          'preferred_lft forever')

    def test_routes_added_and_deleted(self):
        self.assertCaught(
            '10.250.0.0/24 dev br-ex proto kernel scope link src 10.250.0.5 ',
            'local 10.250.0.5 dev br-ex table local proto kernel scope host '
            'src 10.250.0.5 ',
            'broadcast 10.250.0.255 dev br-ex table local proto kernel '
            'scope link src 10.250.0.5 ',
            'Deleted 10.250.0.0/24 dev br-ex proto kernel scope link src '
            '10.250.0.5 ',
            'Deleted 169.254.169.254 via 10.250.0.2 dev br-ex ',
            'Deleted 10.0.0.0/8 via 192.0.2.1 dev eth0 ')

    def test_a_guest_gateway_as_rta_via_and_in_nexthops(self):
        self.assertCaught(
            '198.51.100.0/24 via inet 10.250.0.1 dev br-ex ',
            '198.51.100.0/24 proto static metric 20 \\\tnexthop via '
            '192.0.2.1 dev eth0 weight 1 \\\tnexthop via 10.250.0.1 dev '
            'br-ex weight 1 ')

    def test_the_guest_sides_ipv6_chatter_does_not_count(self):
        self.assertEqual([], violations(lines=watch(
            '9: tap6f1e4c2a-8d    inet6 fe80::fc16:3eff:fe6b:1a2c/64 scope '
            'link \\       valid_lft forever preferred_lft forever',
            'fe80::/64 dev tap6f1e4c2a-8d proto kernel metric 256 pref '
            'medium',
            'local fe80::fc16:3eff:fe6b:1a2c dev tap6f1e4c2a-8d table local '
            'proto kernel metric 0 pref medium',
            'multicast ff00::/8 dev tap6f1e4c2a-8d table local proto kernel '
            'metric 256 pref medium',
            'Deleted fe80::/64 dev tap6f1e4c2a-8d proto kernel metric 256 '
            'pref medium')))

    def test_the_hosts_own_changes_do_not_count(self):
        self.assertEqual([], violations(lines=watch(
            'Deleted default via 192.0.2.1 dev eth0 proto dhcp src '
            '192.0.2.2 metric 100 ',
            'default via 192.0.2.1 dev eth0 proto dhcp src 192.0.2.2 '
            'metric 100 ',
            'default via fd00::1 dev eth0 metric 1024 pref medium',
            '4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global '
            'eth0\\       valid_lft forever preferred_lft forever')))

    def test_a_default_route_via_another_family_matches_its_baseline(self):
        routes = routes_json({'dst': 'default', 'dev': 'eth0',
                              'via': {'family': 'inet6', 'host': 'fe80::1'}})
        known = network.baseline(network.route_entries(routes))
        self.assertEqual([], violations(
            routes=[routes], baseline=known,
            lines=watch('Deleted default via inet6 fe80::1 dev eth0 ')))

    def test_a_new_default_route(self):
        found = self.assertCaught('default dev snapext0 scope link ',
                                  'default via fd00::99 dev eth0 metric '
                                  '1024 pref medium')
        self.assertTrue(all(s.endswith('not there at up') for s in found))

    def test_a_default_route_through_a_guest_gateway(self):
        found = self.assertCaught('default via 10.250.0.1 dev br-ex ')
        self.assertTrue(found[0].endswith('overlaps ' + PROVIDER))

    def test_labels_and_nsid_before_the_event(self):
        self.assertCaught('[nsid current][ROUTE]10.250.0.0/24 dev br-ex ',
                          '[ADDR]7: br-ex    inet 10.250.0.5/24 scope '
                          'global br-ex')

    def test_an_unknown_format_naming_a_guest_address_still_counts(self):
        self.assertCaught('something new 10.250.0.77 we do not parse')

    def test_lines_without_addresses_are_ignored(self):
        self.assertEqual([], violations(lines=[
            '\n', 'Timestamp: Mon Nov 30 11:00:00 2026 123456 usec\n',
            TS + 'Deleted unreachable default dev lo metric 4294967295 '
            'pref medium\n']))

    def test_the_state_and_the_log_are_both_evidence(self):
        found = violations(
            addr_json('br-ex', ('inet', '10.250.0.5', 24)),
            lines=watch('Deleted 7: br-ex    inet 10.250.0.5/24 scope '
                        'global br-ex'))
        self.assertEqual(2, len(found))
        self.assertTrue(found[0].startswith('address 10.250.0.5/24 on '
                                            'br-ex overlaps'))
        self.assertTrue(found[1].startswith('netwatch: '))


IPTABLES_HOST = """\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
"""

IPTABLES_GUARDED = """\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N DOCKER
-N MINICLOUD-GUARD
-A INPUT -j MINICLOUD-GUARD
-A INPUT -i tap+ -j ACCEPT
-A FORWARD -j MINICLOUD-GUARD
-A FORWARD -j DOCKER
-A OUTPUT -j MINICLOUD-GUARD
-A OUTPUT -j MINICLOUD-GUARD
-A DOCKER -d 172.17.0.2/32 -j ACCEPT
-A MINICLOUD-GUARD -i tap+ -j DROP
-A MINICLOUD-GUARD -o tap+ -j DROP
"""

ARPTABLES_GUARDED = """\
*filter
:INPUT ACCEPT
:OUTPUT ACCEPT
:MINICLOUD-GUARD -
-A INPUT -j MINICLOUD-GUARD --h-length 6 --h-type 1
-A OUTPUT -j MINICLOUD-GUARD --h-length 6 --h-type 1
-A MINICLOUD-GUARD -j DROP -i tap+ --h-length 6 --h-type 1
"""


class GuardTestCase(unittest.TestCase):

    def test_each_tool_makes_the_chain_fills_it_then_jumps_to_it(self):
        cmds = network.guard_commands(('tap+', 'br-ex'))
        tools = [c[0] for c in cmds]
        self.assertEqual(['iptables'] * 8 + ['ip6tables'] * 8 +
                         ['arptables'] * 7, tools)
        self.assertEqual([
            ['iptables', '-w', '-N', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-A', 'MINICLOUD-GUARD', '-i', 'tap+',
             '-j', 'DROP'],
            ['iptables', '-w', '-A', 'MINICLOUD-GUARD', '-o', 'tap+',
             '-j', 'DROP'],
            ['iptables', '-w', '-A', 'MINICLOUD-GUARD', '-i', 'br-ex',
             '-j', 'DROP'],
            ['iptables', '-w', '-A', 'MINICLOUD-GUARD', '-o', 'br-ex',
             '-j', 'DROP'],
            ['iptables', '-w', '-I', 'INPUT', '1', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-I', 'OUTPUT', '1', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-I', 'FORWARD', '1', '-j',
             'MINICLOUD-GUARD']], cmds[:8])
        self.assertEqual([['arptables', '-I', 'INPUT', '1', '-j',
                           'MINICLOUD-GUARD'],
                          ['arptables', '-I', 'OUTPUT', '1', '-j',
                           'MINICLOUD-GUARD']], cmds[-2:])

    def test_installing_changes_no_other_chain(self):
        for cmd in network.guard_commands():
            words = [w for w in cmd[1:] if w != '-w']
            if words[0] == '-I':
                self.assertEqual(['1', '-j', 'MINICLOUD-GUARD'], words[2:])
            else:
                self.assertIn(words[0], ('-N', '-A'))
                self.assertEqual('MINICLOUD-GUARD', words[1])

    def test_the_default_interfaces(self):
        ifaces = {c[c.index('-i') + 1] for c in network.guard_commands()
                  if '-i' in c}
        self.assertEqual({'tap+', 'snapext0', 'br-int', 'br-ex',
                          'ovs-netdev'}, ifaces)

    def test_state_of_a_listing(self):
        self.assertEqual((False, []), network.guard_state(IPTABLES_HOST))
        exists, jumps = network.guard_state(IPTABLES_GUARDED)
        self.assertTrue(exists)
        self.assertEqual([['INPUT', '-j', 'MINICLOUD-GUARD'],
                          ['FORWARD', '-j', 'MINICLOUD-GUARD'],
                          ['OUTPUT', '-j', 'MINICLOUD-GUARD'],
                          ['OUTPUT', '-j', 'MINICLOUD-GUARD']], jumps)

    def test_removal_deletes_our_jumps_then_our_chain_only(self):
        cmds = network.guard_removal_commands(
            [IPTABLES_GUARDED, IPTABLES_HOST, ARPTABLES_GUARDED])
        self.assertEqual([
            ['iptables', '-w', '-D', 'INPUT', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-D', 'FORWARD', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-D', 'OUTPUT', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-D', 'OUTPUT', '-j', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-F', 'MINICLOUD-GUARD'],
            ['iptables', '-w', '-X', 'MINICLOUD-GUARD'],
            ['arptables', '-D', 'INPUT', '-j', 'MINICLOUD-GUARD',
             '--h-length', '6', '--h-type', '1'],
            ['arptables', '-D', 'OUTPUT', '-j', 'MINICLOUD-GUARD',
             '--h-length', '6', '--h-type', '1'],
            ['arptables', '-F', 'MINICLOUD-GUARD'],
            ['arptables', '-X', 'MINICLOUD-GUARD']], cmds)

    def test_nothing_to_remove_on_a_clean_host(self):
        self.assertEqual([], network.guard_removal_commands(
            [IPTABLES_HOST, IPTABLES_HOST, '']))
        self.assertEqual([], network.guard_leftovers(
            [IPTABLES_HOST, IPTABLES_HOST, '']))

    def test_leftovers_name_the_tool(self):
        self.assertEqual(
            ['iptables chain MINICLOUD-GUARD (4 jump(s) to it)',
             'arptables chain MINICLOUD-GUARD (2 jump(s) to it)'],
            network.guard_leftovers(
                [IPTABLES_GUARDED, IPTABLES_HOST, ARPTABLES_GUARDED]))


def link(name, kind=None):
    entry = {'ifindex': 9, 'ifname': name, 'flags': ['BROADCAST'],
             'mtu': 1500, 'operstate': 'DOWN', 'link_type': 'ether'}
    if kind:
        entry['linkinfo'] = {'info_kind': kind}
    return entry


class LeftoversTestCase(unittest.TestCase):

    def test_netns_names(self):
        listing = ('snapdriver-ext (id: 0)\nqdhcp-%s\nqdhcp-%s (id: 2)\n'
                   'snapdriver-ext2\n\n' % (NET_ID, OTHER_ID))
        names = network.netns_names(listing)
        self.assertEqual(['snapdriver-ext', 'qdhcp-' + NET_ID,
                          'qdhcp-' + OTHER_ID, 'snapdriver-ext2'], names)
        self.assertEqual(['snapdriver-ext', 'qdhcp-' + NET_ID],
                         network.our_netns(names, [NET_ID]))
        self.assertEqual(['snapdriver-ext'],
                         network.our_netns(names, []))

    def test_no_netns(self):
        self.assertEqual([], network.our_netns(network.netns_names(''),
                                               [NET_ID]))

    def test_our_links_by_name_and_kind(self):
        links = json.dumps([
            json.loads(HOST_LINKS)[0], link('br-int', 'tun'),
            link('br-ex', 'tun'), link('ovs-netdev', 'tun'),
            link('snapext0', 'veth'), link('tap6f1e4c2a-8d', 'tun'),
            link('vnet0', 'tun'), link('virbr0', 'bridge')])
        self.assertEqual(['br-int (tun)', 'br-ex (tun)', 'ovs-netdev (tun)',
                          'snapext0 (veth)'], network.our_links(links))

    def test_another_ovs_and_unknown_kinds_are_not_ours(self):
        links = json.dumps([link('br-int', 'openvswitch'),
                            link('br-ex'), link('snapext0', 'dummy')])
        self.assertEqual([], network.our_links(links))

    def test_dnsmasq_and_haproxy_of_our_state_dir(self):
        procs = [
            (101, 'dnsmasq --no-hosts --no-resolv --pid-file=%s/neutron/'
                  'dhcp/%s/pid --dhcp-hostsfile=%s/neutron/dhcp/%s/host'
                  % (STATE, NET_ID, STATE, NET_ID)),
            (102, 'haproxy -f %s/neutron/ns-metadata-proxy/%s.conf'
                  % (STATE, NET_ID)),
            (103, '/usr/sbin/dnsmasq --conf-file=/var/lib/libvirt/dnsmasq/'
                  'default.conf --leasefile-ro'),
            (104, 'dnsmasq --pid-file=%s2/neutron/dhcp/%s/pid'
                  % (STATE, OTHER_ID)),
            (105, '%s/bin/python neutron-dhcp-agent --config-file '
                  '%s/etc/neutron/neutron.conf' % (STATE, STATE)),
        ]
        found = network.our_processes(procs, STATE)
        self.assertEqual([101, 102],
                         [int(s.split()[1].rstrip(':')) for s in found])

    def test_dhcp_network_ids_of_our_state_dir(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in (NET_ID, 'lease_relay', OTHER_ID.upper()):
                os.makedirs(os.path.join(tmp, 'neutron', 'dhcp', name))
            with mock.patch.object(network, 'path',
                                   lambda *p: os.path.join(tmp, *p)):
                self.assertEqual([NET_ID], network.dhcp_network_ids())
                os.rename(os.path.join(tmp, 'neutron'),
                          os.path.join(tmp, 'gone'))
                self.assertEqual([], network.dhcp_network_ids())


class WrapperTestCase(unittest.TestCase):
    """take_baseline and root_ns_violations over canned command output."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        for sub in ('run', 'log'):
            os.makedirs(os.path.join(self.tmp, sub))
        self.outputs = {network.IP_ADDR: HOST_ADDR,
                        network.IP_ROUTES[0]: HOST_ROUTES4,
                        network.IP_ROUTES[1]: HOST_ROUTES6}
        for target, value in (
                ('path', lambda *p: os.path.join(self.tmp, *p)),
                ('read', lambda cmd: self.outputs[tuple(cmd)])):
            patcher = mock.patch.object(network, target, value)
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_a_clean_run(self):
        network.take_baseline()
        with open(os.path.join(self.tmp, 'run', network.BASELINE)) as f:
            self.assertEqual(HOST_BASELINE, json.load(f))
        self.assertEqual([], network.root_ns_violations())

    def test_up_refuses_an_overlapping_host(self):
        self.outputs[network.IP_ROUTES[0]] = routes_json(
            {'dst': '10.0.0.0/8', 'gateway': '192.0.2.1', 'dev': 'eth0'})
        self.assertRaisesRegex(network.MinicloudError,
                               'route 10.0.0.0/8 via 192.0.2.1 dev eth0 '
                               'overlaps 10.250.0.0/24',
                               network.take_baseline)
        self.assertFalse(os.path.exists(
            os.path.join(self.tmp, 'run', network.BASELINE)))

    def test_what_netwatch_logged_counts_after_it_is_gone(self):
        network.take_baseline()
        with open(os.path.join(self.tmp, 'log', 'netwatch.log'), 'w') as f:
            f.writelines(watch('Deleted 10.250.0.0/24 dev br-ex proto '
                               'kernel scope link src 10.250.0.5 '))
        found = network.root_ns_violations()
        self.assertEqual(1, len(found), found)
        self.assertIn('Deleted 10.250.0.0/24 dev br-ex', found[0])

    def test_no_baseline_no_judgement_of_default_routes(self):
        self.assertEqual([], network.root_ns_violations())
