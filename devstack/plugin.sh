#!/bin/bash
#
# devstack/plugin.sh - devstack plugin for nova-snapdriver
#
# Makes devstack's nova-compute run nova-snapdriver, nova's libvirt driver
# with a safer snapshot():
#
#   [DEFAULT] compute_driver = snapdriver.SnapLibvirtDriver
#
# VIRT_DRIVER stays "libvirt": devstack installs and configures libvirt and
# nova's [libvirt] options as usual, and this plugin replaces only the
# compute driver.  devstack sources this file as
#
#   source plugin.sh <mode> [<phase>]
#
# and it does, when the service snapdriver is enabled (devstack/settings
# enables it):
#
#   stack install      install_nova_snapdriver (where n-cpu is enabled)
#   stack post-config  configure_nova_snapdriver (where n-cpu is enabled)
#   stack test-config  configure_tempest_for_nova_snapdriver (where tempest
#                      is enabled)
#   unstack            stop_nova_snapdriver: nothing to stop
#   clean              cleanup_nova_snapdriver
#
# See devstack/README.md.  tests/devstack runs these phases in a fake
# devstack host.

# Save trace setting
_XTRACE_NOVA_SNAPDRIVER=$(set +o | grep xtrace)
set +o xtrace


# Defaults
# --------

# Set by lib/nova and lib/tempest when devstack sources this file; the
# defaults here are the values devstack gives them.
DEST=${DEST:-/opt/stack}
NOVA_CONF_DIR=${NOVA_CONF_DIR:-/etc/nova}
NOVA_CONF=${NOVA_CONF:-$NOVA_CONF_DIR/nova.conf}
NOVA_INSTANCES_PATH=${NOVA_INSTANCES_PATH:-${DATA_DIR:-$DEST/data}/nova/instances}
TEMPEST_DIR=${TEMPEST_DIR:-$DEST/tempest}
TEMPEST_CONFIG=${TEMPEST_CONFIG:-$TEMPEST_DIR/etc/tempest.conf}

NOVA_SNAPDRIVER_DIR=${NOVA_SNAPDRIVER_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# The name nova.conf gives the driver: nova imports compute drivers only as
# nova.virt.<compute_driver>, hence the re-export module nova/virt/snapdriver.
SNAPDRIVER_COMPUTE_DRIVER=snapdriver.SnapLibvirtDriver

# The first line of every file this plugin writes outside its own tree;
# clean removes a file only if it starts with it.
_SNAPDRIVER_MARKER="# Installed by the nova-snapdriver devstack plugin (devstack/plugin.sh); clean.sh removes it."

# The instances path the filters file in the repository is written for.
_SNAPDRIVER_FILTERS_PREFIX=/var/lib/nova/instances


# Helpers
# -------

# _snapdriver_nova_python - the Python interpreter that runs nova
function _snapdriver_nova_python {
    if [[ -n ${NOVA_SNAPDRIVER_PYTHON:-} ]]; then
        echo "$NOVA_SNAPDRIVER_PYTHON"
    elif [[ -n ${PROJECT_VENV[nova]:-} ]]; then
        echo "${PROJECT_VENV[nova]}/bin/python3"
    else
        echo "${PYTHON:-python3}"
    fi
}

# _snapdriver_nova_virt_dir <python> - the directory nova imports its
# drivers from: nova.virt.__path__[0], as that python sees it.  With an
# editable nova (devstack's setup_develop of $DEST/nova) this is
# $DEST/nova/nova/virt, not site-packages.
function _snapdriver_nova_virt_dir {
    "$1" -c 'import nova.virt; print(nova.virt.__path__[0])'
}

# _snapdriver_reexport_origin <python> - the file "import
# nova.virt.snapdriver" would load, or nothing if it is not importable
function _snapdriver_reexport_origin {
    "$1" -c 'import importlib.util as u
spec = u.find_spec("nova.virt.snapdriver")
print(spec.origin if spec else "")'
}

# _snapdriver_is_ours <file> - true if this plugin wrote <file>
function _snapdriver_is_ours {
    [[ -f $1 ]] && [[ $(head -n 1 "$1") == "$_SNAPDRIVER_MARKER" ]]
}

# _snapdriver_sudo_unless_writable <dir> - "sudo" if <dir> is not writable
# by the stack user
function _snapdriver_sudo_unless_writable {
    if [[ ! -w $1 ]]; then
        echo sudo
    fi
}

# _snapdriver_regex <path> - <path> as a regular expression that matches
# exactly it (rootwrap's RegExpFilter arguments are Python regexes)
function _snapdriver_regex {
    printf '%s' "$1" | sed -e 's/[][\\.^$*+?(){}|]/\\&/g'
}

# _snapdriver_rewrite_filters <file> <instances path> - print <file> with
# nova's default instances path in its filter lines replaced by <instances
# path> (comment lines are kept as they are)
function _snapdriver_rewrite_filters {
    OLD_PREFIX="$_SNAPDRIVER_FILTERS_PREFIX/" \
    NEW_PREFIX="$(_snapdriver_regex "$2")/" \
    awk '
        # literal (not regex) replacement of every <old> in <s>
        function replace(s, old, new,    out, i) {
            out = ""
            while ((i = index(s, old)) > 0) {
                out = out substr(s, 1, i - 1) new
                s = substr(s, i + length(old))
            }
            return out s
        }
        /^[ \t]*#/ { print; next }
        { print replace($0, ENVIRON["OLD_PREFIX"], ENVIRON["NEW_PREFIX"]) }
        ' "$1"
}

# _snapdriver_filters_dir - the directory nova-rootwrap reads filters from
function _snapdriver_filters_dir {
    local dir=${SNAPDRIVER_ROOTWRAP_FILTERS_DIR:-}
    local rootwrap_conf=$NOVA_CONF_DIR/rootwrap.conf
    if [[ -z $dir && -r $rootwrap_conf ]]; then
        dir=$(iniget "$rootwrap_conf" DEFAULT filters_path)
        dir=${dir%%,*}
    fi
    echo "${dir:-$NOVA_CONF_DIR/rootwrap.d}"
}


# Entry points
# ------------

# install_nova_snapdriver - install the package into nova's Python
# environment and make nova.virt.snapdriver importable there
function install_nova_snapdriver {
    if [[ ${VIRT_DRIVER:-libvirt} != libvirt ]]; then
        die $LINENO "nova-snapdriver extends nova's libvirt driver: it needs VIRT_DRIVER=libvirt, not '$VIRT_DRIVER'"
    fi

    # Like setup_develop (editable: a change in $NOVA_SNAPDRIVER_DIR needs
    # only a restart of n-cpu), but --no-deps: requirements.txt names nova,
    # which devstack installed from $DEST/nova, and pip must not replace it,
    # or any of nova's libraries, with releases from PyPI.
    local PIP_VIRTUAL_ENV=${PIP_VIRTUAL_ENV:-}
    if [[ -n ${PROJECT_VENV[nova]:-} ]]; then
        PIP_VIRTUAL_ENV=${PROJECT_VENV[nova]}
    fi
    pip_install --no-deps -e "$NOVA_SNAPDRIVER_DIR" || \
        die $LINENO "nova-snapdriver: pip could not install $NOVA_SNAPDRIVER_DIR"

    _snapdriver_place_reexport

    # nova-compute would fail to load the driver later, with less to go on.
    local python
    python=$(_snapdriver_nova_python)
    "$python" -c "from nova.virt.snapdriver import SnapLibvirtDriver" || \
        die $LINENO "nova-snapdriver: $python cannot import nova.virt.snapdriver.SnapLibvirtDriver"
}

# _snapdriver_place_reexport - put nova/virt/snapdriver/__init__.py where
# nova looks for it, unless it is importable already
#
# pip installs the re-export into site-packages/nova/virt/snapdriver.  That
# is where a packaged (non-editable) nova looks.  devstack installs nova
# editable, from $DEST/nova: nova.virt is then $DEST/nova/nova/virt and the
# copy in site-packages is never found.
function _snapdriver_place_reexport {
    local python virt_dir origin target
    python=$(_snapdriver_nova_python)
    virt_dir=$(_snapdriver_nova_virt_dir "$python") || \
        die $LINENO "nova-snapdriver: $python cannot import nova.virt; is nova installed?"
    target=$virt_dir/snapdriver/__init__.py
    origin=$(_snapdriver_reexport_origin "$python") || \
        die $LINENO "nova-snapdriver: $python failed to look for nova.virt.snapdriver"

    if [[ -n $origin ]] && ! _snapdriver_is_ours "$origin"; then
        echo "nova-snapdriver: nova.virt.snapdriver is importable from $origin already"
        return 0
    fi

    local sudo
    sudo=$(_snapdriver_sudo_unless_writable "$virt_dir")
    $sudo mkdir -p "$virt_dir/snapdriver"
    {
        echo "$_SNAPDRIVER_MARKER"
        echo "# Copied from $NOVA_SNAPDRIVER_DIR/nova/virt/snapdriver/__init__.py"
        echo "# because nova here is not installed where pip put that file."
        cat "$NOVA_SNAPDRIVER_DIR/nova/virt/snapdriver/__init__.py"
    } | $sudo tee "$target" > /dev/null

    origin=$(_snapdriver_reexport_origin "$python")
    if [[ $origin != "$target" ]]; then
        die $LINENO "nova-snapdriver: placed $target, but nova.virt.snapdriver resolves to '$origin'"
    fi
    echo "nova-snapdriver: placed the nova.virt.snapdriver re-export at $target"
}

# configure_nova_snapdriver - set the compute driver and its options, and
# install the rootwrap filters
#
# Options go to $NOVA_CONF, not $NOVA_CPU_CONF: devstack creates
# nova-cpu.conf later, when it starts n-cpu, as a copy of nova.conf (then
# merges local.conf's [[post-config|$NOVA_CPU_CONF]] into it), so anything
# written to nova-cpu.conf in this phase would be lost.
function configure_nova_snapdriver {
    iniset "$NOVA_CONF" DEFAULT compute_driver "$SNAPDRIVER_COMPUTE_DRIVER"

    local opt var
    for opt in block_job_timeout block_job_bandwidth block_job_poll_interval \
               progress_log_interval reserved_space_mb convert_coroutines; do
        var=SNAPDRIVER_${opt^^}
        if [[ -n ${!var:-} ]]; then
            iniset "$NOVA_CONF" snapdriver "$opt" "${!var}"
        fi
    done

    _snapdriver_install_filters
}

# _snapdriver_install_filters - install etc/nova/rootwrap.d/snapdriver.filters
# for this host's instances path
#
# The file allows paths under nova's default instances path,
# /var/lib/nova/instances, and the default [libvirt] snapshots_directory
# under it; devstack's is $NOVA_INSTANCES_PATH (/opt/stack/data/nova/
# instances), and snapshots stay in its snapshots/ directory.  devstack's
# configure_nova empties the rootwrap.d directory and fills it with nova's
# filters before the install phase, so this file survives.
function _snapdriver_install_filters {
    local src=$NOVA_SNAPDRIVER_DIR/etc/nova/rootwrap.d/snapdriver.filters
    local instances=${NOVA_INSTANCES_PATH%/}
    if [[ $instances != /* || $instances == *,* ]]; then
        die $LINENO "nova-snapdriver: NOVA_INSTANCES_PATH must be an absolute path without a comma (rootwrap's field separator): '$instances'"
    fi

    local dir tmp
    dir=$(_snapdriver_filters_dir)
    tmp=$(mktemp)
    {
        echo "$_SNAPDRIVER_MARKER"
        echo "# Copied from $src"
        echo "# with $_SNAPDRIVER_FILTERS_PREFIX/ replaced by $instances/ in the filters."
        echo "#"
        _snapdriver_rewrite_filters "$src" "$instances"
    } > "$tmp"

    if [[ ! -d $dir ]]; then
        sudo install -d -o root -g root -m 0755 "$dir"
    fi
    sudo install -o root -g root -m 0644 "$tmp" "$dir/snapdriver.filters"
    rm -f "$tmp"
    echo "nova-snapdriver: installed $dir/snapdriver.filters for $instances"
}

# configure_tempest_for_nova_snapdriver - enable our tempest plugin's tests
# and install the plugin into tempest's venv
function configure_tempest_for_nova_snapdriver {
    iniset "$TEMPEST_CONFIG" snapdriver_feature_enabled live_snapshot "$SNAPDRIVER_TEMPEST_LIVE_SNAPSHOT"
    iniset "$TEMPEST_CONFIG" snapdriver_feature_enabled paused_snapshot "$SNAPDRIVER_TEMPEST_PAUSED_SNAPSHOT"
    iniset "$TEMPEST_CONFIG" snapdriver_feature_enabled stopped_snapshot "$SNAPDRIVER_TEMPEST_STOPPED_SNAPSHOT"

    # devstack's install_tempest makes this venv (tox -efull); --no-deps
    # keeps nova, which requirements.txt names, out of it.
    local venv=${SNAPDRIVER_TEMPEST_VENV:-$TEMPEST_DIR/.tox/tempest}
    if [[ ! -x $venv/bin/pip ]]; then
        # warn returns the status it was called with: return 0 ourselves,
        # or errexit ends stack.sh.
        warn $LINENO "nova-snapdriver: no tempest venv at $venv; install the tempest plugin with: pip install --no-deps $NOVA_SNAPDRIVER_DIR"
        return 0
    fi
    "$venv/bin/pip" install --no-deps -e "$NOVA_SNAPDRIVER_DIR" || \
        die $LINENO "nova-snapdriver: pip could not install $NOVA_SNAPDRIVER_DIR into $venv"
}

# stop_nova_snapdriver - nothing to stop: the driver runs inside
# nova-compute (n-cpu), which devstack stops itself
function stop_nova_snapdriver {
    :
}

# cleanup_nova_snapdriver - remove the re-export and the filters file this
# plugin installed (files it did not write are left alone)
function cleanup_nova_snapdriver {
    local python virt_dir sudo
    python=$(_snapdriver_nova_python)
    if virt_dir=$(_snapdriver_nova_virt_dir "$python" 2> /dev/null) && \
            _snapdriver_is_ours "$virt_dir/snapdriver/__init__.py"; then
        sudo=$(_snapdriver_sudo_unless_writable "$virt_dir")
        $sudo rm -rf "$virt_dir/snapdriver"
        echo "nova-snapdriver: removed $virt_dir/snapdriver"
    fi

    local filters
    filters=$(_snapdriver_filters_dir)/snapdriver.filters
    if _snapdriver_is_ours "$filters"; then
        sudo rm -f "$filters"
        echo "nova-snapdriver: removed $filters"
    fi
}


# Dispatch
# --------

if is_service_enabled snapdriver; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        if is_service_enabled n-cpu; then
            echo_summary "Installing nova-snapdriver"
            install_nova_snapdriver
        fi

    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        if is_service_enabled n-cpu; then
            echo_summary "Configuring nova-compute for nova-snapdriver"
            configure_nova_snapdriver
        fi

    elif [[ "${1:-}" == "stack" && "${2:-}" == "test-config" ]]; then
        if is_service_enabled tempest; then
            echo_summary "Configuring tempest for nova-snapdriver"
            configure_tempest_for_nova_snapdriver
        fi
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        stop_nova_snapdriver
    fi

    if [[ "${1:-}" == "clean" ]]; then
        echo_summary "Removing nova-snapdriver's re-export and rootwrap filters"
        cleanup_nova_snapdriver
    fi
fi

# Restore xtrace
$_XTRACE_NOVA_SNAPDRIVER

# Local variables:
# mode: shell-script
# End:
