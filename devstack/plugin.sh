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
# nova-compute runs as $STACK_USER, and the driver runs no root command: no
# rootwrap filters are installed (a stale snapdriver.filters from an earlier
# version is removed), and the directories nova-compute writes for the
# driver are $STACK_USER's.  See devstack/README.md.  tests/devstack runs these phases in a fake
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
TEMPEST_DIR=${TEMPEST_DIR:-$DEST/tempest}
TEMPEST_CONFIG=${TEMPEST_CONFIG:-$TEMPEST_DIR/etc/tempest.conf}

NOVA_SNAPDRIVER_DIR=${NOVA_SNAPDRIVER_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# The name nova.conf gives the driver: nova imports compute drivers only as
# nova.virt.<compute_driver>, hence the re-export module nova/virt/snapdriver.
SNAPDRIVER_COMPUTE_DRIVER=snapdriver.SnapLibvirtDriver

# Where nova-snapdriver-manage is linked to (devstack/settings; empty: no
# link).
SNAPDRIVER_BIN_LINK_DIR=${SNAPDRIVER_BIN_LINK_DIR-/usr/local/bin}

# The first line of every file this plugin writes outside its own tree;
# clean removes a file only if it starts with it.
_SNAPDRIVER_MARKER="# Installed by the nova-snapdriver devstack plugin (devstack/plugin.sh); clean.sh removes it."

# The user devstack runs stack.sh and the services as, nova-compute
# included (stackrc sets it).
STACK_USER=${STACK_USER:-$(id -un)}


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

# _snapdriver_filters_dirs - every directory that may hold a
# snapdriver.filters an earlier version of this plugin installed: each
# filters_path entry of $NOVA_CONF_DIR/rootwrap.conf (the directories
# nova-rootwrap reads, where such a file is a liability),
# $NOVA_CONF_DIR/rootwrap.d, and SNAPDRIVER_ROOTWRAP_FILTERS_DIR if
# local.conf still sets it (it said where those versions put the file)
function _snapdriver_filters_dirs {
    local rootwrap_conf=$NOVA_CONF_DIR/rootwrap.conf dirs="" dir
    if [[ -r $rootwrap_conf ]]; then
        dirs=$(iniget "$rootwrap_conf" DEFAULT filters_path)
    fi
    dirs=$dirs,$NOVA_CONF_DIR/rootwrap.d,${SNAPDRIVER_ROOTWRAP_FILTERS_DIR:-}
    local IFS=,
    for dir in $dirs; do
        dir=$(echo "$dir" | sed -e 's/^[[:space:]]*//; s/[[:space:]]*$//; s:/*$::')
        if [[ -n $dir ]]; then
            echo "$dir"
        fi
    done | sort -u
}

# _snapdriver_remove_stale_filters - remove the snapdriver.filters that
# earlier versions of this plugin installed into nova's rootwrap filters
#
# The driver runs no command as root: every qemu-img runs as the user
# nova-compute runs as.  Those filters let that user run "qemu-img convert"
# as root through nova-rootwrap, and qemu-img follows the backing file or
# data-file that a disk's qcow2 header names, so whoever can write that
# header (a guest that escaped into its QEMU process) could have it read any
# host file into an image.  A snapdriver.filters this plugin did not write
# is left in place, with a warning.
function _snapdriver_remove_stale_filters {
    local dir file
    for dir in $(_snapdriver_filters_dirs); do
        file=$dir/snapdriver.filters
        if _snapdriver_is_ours "$file"; then
            sudo rm -f "$file"
            echo "nova-snapdriver: removed $file, which an earlier version of this plugin installed: the driver runs no root command and needs no rootwrap filters, and these let nova-rootwrap run qemu-img as root on disks whose header can name any host file"
        elif [[ -e $file || -L $file ]]; then
            warn $LINENO "nova-snapdriver: $file was not installed by this plugin and is left in place; the driver needs no rootwrap filters, and this file may let nova-rootwrap run qemu-img as root on disks whose header can name any host file: remove it with 'sudo rm $file'"
        fi
    done
}

# _snapdriver_nova_dirs <nova.conf> - the [libvirt] snapshots_directory and
# [snapdriver] journal_path that nova-compute resolves from <nova.conf>,
# one a line (oslo.config expands $instances_path and $state_path)
function _snapdriver_nova_dirs {
    "$(_snapdriver_nova_python)" - "$1" <<'PYTHON'
import sys

from oslo_config import cfg

import nova.conf  # noqa: F401  registers [libvirt]
from nova_snapdriver import conf  # noqa: F401  registers [snapdriver]

CONF = cfg.CONF
CONF(['--config-file', sys.argv[1]], project='nova', default_config_files=[])
print(CONF.libvirt.snapshots_directory)
print(CONF.snapdriver.journal_path)
PYTHON
}

# _snapdriver_nova_dir <dir> <mode> <option> - make <dir> a directory that
# nova-compute (run by $STACK_USER, as this plugin is) can write
#
# A missing <dir> is created by $STACK_USER itself where it can write the
# parent, else by "sudo install -d -o $STACK_USER"; never root-owned.  An
# existing <dir> must already be writable by $STACK_USER (and, with mode
# 0700, owned by it: the journal holds 0600 records only its owner reads);
# the plugin does not chown what it did not create, it stops and says
# what to do.
function _snapdriver_nova_dir {
    local dir=$1 mode=$2 option=$3 parent
    if [[ $dir != /* ]]; then
        die $LINENO "nova-snapdriver: $option must be an absolute path: '$dir'"
    fi
    if [[ ! -e $dir ]]; then
        parent=$(dirname "$dir")
        while [[ ! -e $parent ]]; do
            parent=$(dirname "$parent")
        done
        if [[ $(id -un) == "$STACK_USER" && -d $parent && -w $parent && -x $parent ]]; then
            install -d -m "$mode" "$dir"
        else
            sudo install -d -o "$STACK_USER" -g "$(id -g "$STACK_USER")" -m "$mode" "$dir"
        fi
        echo "nova-snapdriver: created $option $dir for nova-compute ($STACK_USER, mode $mode)"
        return 0
    fi
    local owner
    owner=$(stat -c %U "$dir")
    if [[ ! -d $dir || ! -w $dir || ! -x $dir ]] || \
            [[ $mode == 0700 && $owner != "$STACK_USER" ]]; then
        die $LINENO "nova-snapdriver: nova-compute runs as $STACK_USER and needs $option $dir to be a directory it owns and can write (it is $(stat -c '%F owned by %U:%G, mode %a' "$dir")); fix it with 'sudo chown $STACK_USER $dir' or set $option elsewhere"
    fi
}

# _snapdriver_nova_dirs_ready - the directories nova-compute writes for the
# driver, as nova.conf names them, exist and are $STACK_USER's
#
# nova-compute would create them itself, as $STACK_USER, where it can;
# making them now catches a directory it could not write before n-cpu
# starts, and means a later root command (e.g. "sudo
# nova-snapdriver-manage") cannot be the one that creates them root-owned.
function _snapdriver_nova_dirs_ready {
    local dirs
    dirs=$(_snapdriver_nova_dirs "$NOVA_CONF") || \
        die $LINENO "nova-snapdriver: could not read [libvirt] snapshots_directory and [snapdriver] journal_path from $NOVA_CONF"
    _snapdriver_nova_dir "$(sed -n 1p <<< "$dirs")" 0755 "[libvirt] snapshots_directory"
    _snapdriver_nova_dir "$(sed -n 2p <<< "$dirs")" 0700 "[snapdriver] journal_path"
}

# _snapdriver_scripts_dir - where pip puts the console scripts of nova's
# python (the venv's bin, or /usr/local/bin for the system python)
function _snapdriver_scripts_dir {
    "$(_snapdriver_nova_python)" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'
}

# _snapdriver_manage_link - the link this plugin makes to
# nova-snapdriver-manage, or nothing if it makes none
function _snapdriver_manage_link {
    local scripts
    scripts=$(_snapdriver_scripts_dir) || return 0
    if [[ -n $SNAPDRIVER_BIN_LINK_DIR && ${SNAPDRIVER_BIN_LINK_DIR%/} != "$scripts" ]]; then
        echo "${SNAPDRIVER_BIN_LINK_DIR%/}/nova-snapdriver-manage"
    fi
}

# _snapdriver_link_manage - put nova-snapdriver-manage on the stack user's
# PATH, as stack.sh links nova-manage from the global venv into
# /usr/local/bin
function _snapdriver_link_manage {
    local scripts link
    scripts=$(_snapdriver_scripts_dir)
    if [[ ! -x $scripts/nova-snapdriver-manage ]]; then
        die $LINENO "nova-snapdriver: pip installed no $scripts/nova-snapdriver-manage"
    fi
    link=$(_snapdriver_manage_link)
    if [[ -z $link ]]; then
        return 0
    fi
    if [[ -e $link && ! -L $link ]]; then
        echo "nova-snapdriver: $link exists and is not a link; left alone"
        return 0
    fi
    local sudo
    sudo=$(_snapdriver_sudo_unless_writable "$(dirname "$link")")
    $sudo ln -sfn "$scripts/nova-snapdriver-manage" "$link"
    echo "nova-snapdriver: linked $link to $scripts/nova-snapdriver-manage"
}

# Entry points
# ------------

# install_nova_snapdriver - install the package into nova's Python
# environment, make nova.virt.snapdriver importable there, and put
# nova-snapdriver-manage on the PATH
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

    # capture_method stream (and auto, which picks it) reads the disk with
    # libnbd, whose Python binding the distributions ship (not PyPI).
    install_package python3-libnbd
    _snapdriver_libnbd_ready

    _snapdriver_place_reexport

    # nova-compute would fail to load the driver later, with less to go on.
    local python
    python=$(_snapdriver_nova_python)
    "$python" -c "from nova.virt.snapdriver import SnapLibvirtDriver" || \
        die $LINENO "nova-snapdriver: $python cannot import nova.virt.snapdriver.SnapLibvirtDriver"
    "$python" -c "import nova_snapdriver.cmd.manage" || \
        die $LINENO "nova-snapdriver: $python cannot import nova_snapdriver.cmd.manage (nova-snapdriver-manage)"

    _snapdriver_link_manage
}

# _snapdriver_libnbd_ready - make libnbd's binding importable by nova's
# python: a venv (devstack's global venv) does not see the distribution's
# python3-libnbd, so tools/host/link-libnbd links its two files into it.
# Without it the driver works, and stream and auto take backup, saying so.
function _snapdriver_libnbd_ready {
    local python site sudo
    python=$(_snapdriver_nova_python)
    if "$python" -c "import nbd" 2> /dev/null; then
        return 0
    fi
    site=$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    sudo=$(_snapdriver_sudo_unless_writable "$site")
    $sudo "$NOVA_SNAPDRIVER_DIR/tools/host/link-libnbd" "$python" || \
        warn $LINENO "nova-snapdriver: $python cannot import libnbd's binding (nbd): capture_method stream and auto take backup"
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

# configure_nova_snapdriver - set the compute driver and its options, remove
# the rootwrap filters earlier versions installed, and make the directories
# nova-compute writes for the driver
#
# Options go to $NOVA_CONF, not $NOVA_CPU_CONF: devstack creates
# nova-cpu.conf later, when it starts n-cpu, as a copy of nova.conf (then
# merges local.conf's [[post-config|$NOVA_CPU_CONF]] into it), so anything
# written to nova-cpu.conf in this phase would be lost.
function configure_nova_snapdriver {
    iniset "$NOVA_CONF" DEFAULT compute_driver "$SNAPDRIVER_COMPUTE_DRIVER"

    local opt var
    for opt in capture_method block_job_timeout block_job_bandwidth \
               block_job_poll_interval progress_log_interval \
               reserved_space_mb convert_coroutines stream_scratch_max_mb \
               compression_type libvirt_reconnect_timeout \
               recovery_interval journal_path; do
        var=SNAPDRIVER_${opt^^}
        if [[ -n ${!var:-} ]]; then
            iniset "$NOVA_CONF" snapdriver "$opt" "${!var}"
        fi
    done

    _snapdriver_remove_stale_filters
    _snapdriver_nova_dirs_ready
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

# cleanup_nova_snapdriver - remove the re-export and the link to
# nova-snapdriver-manage this plugin made, and any snapdriver.filters an
# earlier version installed (files it did not write are left alone); the
# journal and snapshots directories stay, like nova's state
function cleanup_nova_snapdriver {
    local python virt_dir sudo
    python=$(_snapdriver_nova_python)
    if virt_dir=$(_snapdriver_nova_virt_dir "$python" 2> /dev/null) && \
            _snapdriver_is_ours "$virt_dir/snapdriver/__init__.py"; then
        sudo=$(_snapdriver_sudo_unless_writable "$virt_dir")
        $sudo rm -rf "$virt_dir/snapdriver"
        echo "nova-snapdriver: removed $virt_dir/snapdriver"
    fi

    local link scripts
    link=$(_snapdriver_manage_link 2> /dev/null)
    scripts=$(_snapdriver_scripts_dir 2> /dev/null) || true
    if [[ -n $link && -L $link && \
            $(readlink "$link") == "$scripts/nova-snapdriver-manage" ]]; then
        sudo=$(_snapdriver_sudo_unless_writable "$(dirname "$link")")
        $sudo rm -f "$link"
        echo "nova-snapdriver: removed $link"
    fi

    _snapdriver_remove_stale_filters
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
        echo_summary "Removing nova-snapdriver's re-export and command link"
        cleanup_nova_snapdriver
    fi
fi

# Restore xtrace
$_XTRACE_NOVA_SNAPDRIVER

# Local variables:
# mode: shell-script
# End:
