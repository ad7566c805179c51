#!/bin/bash
#
# tests/devstack/fake_devstack.sh - run devstack/plugin.sh the way devstack
# does, on a fake devstack host
#
#   fake_devstack.sh stack     like stack.sh:   settings, then the phases
#                              pre-install, install, post-config, (n-cpu
#                              start), extra, test-config
#   fake_devstack.sh unstack   like unstack.sh: settings, then unstack
#   fake_devstack.sh clean     like clean.sh:   settings, then clean
#
# Like devstack, it sources the plugin's settings and then sources
# plugin.sh once per phase, in one bash process per command, under
# "set -o errexit" (stack.sh's) and with xtrace on (written to
# $FAKE_DEVSTACK_XTRACE, default /dev/null).  It provides the devstack
# functions the plugin uses, with devstack's semantics (written for this
# harness, not copied from devstack):
#
#   iniset, iniget, ini_has_option   edit and read real ini files
#   is_service_enabled, enable_service, disable_service   ENABLED_SERVICES
#   trueorfalse, die, err, warn, echo_summary, define_plugin, plugin_requires
#   pip_install, setup_develop   RECORD the pip command line devstack would
#                run (in $FAKE_DEVSTACK_LOG) instead of running it: the test
#                makes the package importable itself
#   sudo         runs the command as root, recorded in $FAKE_DEVSTACK_LOG
#                (see the function for how, without sudo installed)
#
# and the one step of devstack between post-config and extra that matters
# to the plugin: starting n-cpu creates $NOVA_CPU_CONF as a copy of
# $NOVA_CONF (lib/nova, start_nova_compute).
#
# Everything comes from the environment: PLUGIN_DIR (the repository, where
# devstack clones it: $DEST/nova-snapdriver), DEST, DATA_DIR,
# STACK_USER (default: the user running this), ENABLED_SERVICES,
# NOVA_CONF_DIR, NOVA_CONF, NOVA_CPU_CONF,
# NOVA_INSTANCES_PATH, TEMPEST_DIR, TEMPEST_CONFIG, PYTHON, GLOBAL_VENV,
# DEVSTACK_VENV, REQUIREMENTS_DIR, VIRT_DRIVER, FAKE_DEVSTACK_LOG, and
# FAKE_DEVSTACK_LOCALRC: a file sourced first, like local.conf's localrc
# section (e.g. "disable_service snapdriver").

set -o errexit

if [[ ! ${1:-} =~ ^(stack|unstack|clean)$ ]]; then
    echo "usage: $0 stack|unstack|clean (see the header for the environment)" >&2
    exit 2
fi

# stack.sh refuses to run as root; so does this, or the test would not see
# what a root-owned file the plugin leaves does to nova-compute.
if [[ $(id -u) == 0 ]]; then
    echo "$0: run this as the (non-root) stack user, as stack.sh is" >&2
    exit 2
fi

# A fake host only: never the real /etc/nova or tempest.conf.
: "${PLUGIN_DIR:?the plugin repository}"
: "${FAKE_DEVSTACK_LOG:?a file to record commands in}"
: "${NOVA_CONF_DIR:?a fake /etc/nova}" "${NOVA_CONF:?}" "${NOVA_CPU_CONF:?}"
: "${TEMPEST_CONFIG:?}" "${PYTHON:?}"
if [[ $(cd "$NOVA_CONF_DIR" && pwd -P) == /etc/nova ]]; then
    echo "$0: NOVA_CONF_DIR is the real /etc/nova" >&2
    exit 2
fi

STACK_USER=${STACK_USER:-$(id -un)}
DEST=${DEST:-/opt/stack}
DATA_DIR=${DATA_DIR:-$DEST/data}
VIRT_DRIVER=${VIRT_DRIVER:-libvirt}
ENABLED_SERVICES=${ENABLED_SERVICES:-}
DISABLED_SERVICES=${DISABLED_SERVICES:-}
GLOBAL_VENV=${GLOBAL_VENV:-True}
DEVSTACK_VENV=${DEVSTACK_VENV:-$DATA_DIR/venv}
REQUIREMENTS_DIR=${REQUIREMENTS_DIR:-$DEST/requirements}
PYTHON3_VERSION=${PYTHON3_VERSION:-3}
# Read by the plugin (USE_VENV=True gives nova a venv of its own here):
# shellcheck disable=SC2034
declare -A -g PROJECT_VENV


# Output and errors
# -----------------

function echo_summary {
    echo "$@"
}

# err and warn return the status they were called with, as devstack's do.
function err {
    # shellcheck disable=SC2319
    local exitcode=$?
    echo "[ERROR] ${BASH_SOURCE[2]:-}:$1 $2" >&2
    return $exitcode
}

function warn {
    # shellcheck disable=SC2319
    local exitcode=$?
    echo "[WARNING] ${BASH_SOURCE[2]:-}:$1 $2"
    echo "warn: $2" >> "$FAKE_DEVSTACK_LOG"
    return $exitcode
}

function die {
    # shellcheck disable=SC2319
    local exitcode=$?
    set +o xtrace
    local line=$1
    shift
    if [[ $exitcode == 0 ]]; then
        exitcode=1
    fi
    err "$line" "$*"
    exit $exitcode
}

function trueorfalse {
    local default=$1
    local value=${!2:-}
    case "$value" in
        1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
        0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
        *) echo "$default" ;;
    esac
}

# sudo <command> - <command> as root, recorded.  stack.sh runs as the
# non-root $STACK_USER, who may sudo anything (devstack's
# /etc/sudoers.d/50_stack_sh); so does this script when the test runs it
# as a throwaway user with the ambient capabilities CAP_SETUID and
# CAP_SETGID and nothing else: that user's own commands keep its uid and
# its file permissions, and setpriv turns only <command> into root (uid 0
# gets all capabilities at exec).  Like sudo's env_reset, <command> gets a
# fresh environment.  Run as root, <command> just runs.
function sudo {
    echo "sudo: $*" >> "$FAKE_DEVSTACK_LOG"
    if [[ $(id -u) == 0 ]]; then
        "$@"
    else
        setpriv --reuid=0 --regid=0 --init-groups -- \
            env -i PATH="$PATH" HOME=/root LANG=C "$@"
    fi
}


# Plugins and services
# --------------------

function define_plugin {
    :
}

function plugin_requires {
    :
}

# ENABLED_SERVICES is a comma-separated list; "nova" stands for any "n-*"
# service, "tempest" is a service of its own.
function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ,$ENABLED_SERVICES, == *,$service,* ]]; then
            return 0
        fi
        if [[ $service == nova && ,$ENABLED_SERVICES == *,n-* ]]; then
            return 0
        fi
    done
    return 1
}

# A service disabled in localrc stays disabled, as in devstack.
function enable_service {
    local service
    for service in "$@"; do
        if [[ ,$DISABLED_SERVICES, == *,$service,* ]]; then
            warn $LINENO "Attempt to enable_service $service when it has been disabled"
            continue
        fi
        if ! is_service_enabled "$service"; then
            ENABLED_SERVICES=${ENABLED_SERVICES:+$ENABLED_SERVICES,}$service
        fi
    done
}

function disable_service {
    local service
    for service in "$@"; do
        DISABLED_SERVICES=${DISABLED_SERVICES:+$DISABLED_SERVICES,}$service
        ENABLED_SERVICES=$(echo ",$ENABLED_SERVICES," | sed -e "s/,$service,/,/g; s/^,//; s/,$//")
    done
}


# ini files
# ---------

# _ini_edit <file> <section> <option> <value> - awk over <file>: replace
# <option>'s value in every [<section>], or add "<option> = <value>" right
# after the first [<section>] line, or add the section at the end.
function _ini_edit {
    INI_SECTION=$2 INI_OPTION=$3 INI_VALUE=$4 awk '
        function is_option(line) {
            return index(line, opt) == 1 && substr(line, length(opt) + 1) ~ /^[ \t]*=/
        }
        BEGIN {
            sec = ENVIRON["INI_SECTION"]; opt = ENVIRON["INI_OPTION"]
            val = ENVIRON["INI_VALUE"]; header = "[" sec "]"
        }
        { line[NR] = $0 }
        END {
            first = 0; found = 0
            for (i = 1; i <= NR; i++) {
                if (substr(line[i], 1, 1) == "[") {
                    in_sec = (index(line[i], header) == 1)
                    if (in_sec && !first) first = i
                } else if (in_sec && is_option(line[i])) {
                    rest = substr(line[i], length(opt) + 1)
                    match(rest, /^[ \t]*=[ \t]*/)
                    line[i] = opt substr(rest, 1, RLENGTH) val
                    found = 1
                }
            }
            for (i = 1; i <= NR; i++) {
                print line[i]
                if (i == first && !found) print opt " = " val
            }
            if (!first) {
                print ""
                print header
                print opt " = " val
            }
        }' "$1"
}

# iniset [-sudo] <file> <section> <option> <value>; creates <file>
function iniset {
    local sudo=""
    if [[ $1 == -sudo ]]; then
        sudo=sudo
        shift
    fi
    local file=$1 section=$2 option=$3 value=${4:-}
    if [[ -z $section || -z $option ]]; then
        return 0
    fi
    if [[ ! -e $file ]]; then
        $sudo touch "$file"
    fi
    local tmp
    tmp=$(mktemp)
    _ini_edit "$file" "$section" "$option" "$value" > "$tmp"
    $sudo cp "$tmp" "$file"
    rm -f "$tmp"
}

# _ini_value <file> <section> <option> - the first value, trimmed; status 1
# if there is none
function _ini_value {
    INI_SECTION=$2 INI_OPTION=$3 awk '
        BEGIN { opt = ENVIRON["INI_OPTION"]; header = "[" ENVIRON["INI_SECTION"] "]" }
        substr($0, 1, 1) == "[" { in_sec = (index($0, header) == 1); next }
        in_sec && index($0, opt) == 1 && substr($0, length(opt) + 1) ~ /^[ \t]*=/ {
            value = substr($0, index($0, "=") + 1)
            gsub(/^[ \t]+|[ \t]+$/, "", value)
            print value
            found = 1
            exit
        }
        END { exit !found }' "$1"
}

# iniget <file> <section> <option>
function iniget {
    _ini_value "$1" "$2" "$3" || true
}

# ini_has_option [-sudo] <file> <section> <option>
function ini_has_option {
    if [[ $1 == -sudo ]]; then
        shift
    fi
    _ini_value "$1" "$2" "$3" > /dev/null
}


# Python
# ------

# pip_install <pip arguments> - record the command devstack would run: the
# pip of $PIP_VIRTUAL_ENV, else of $DEVSTACK_VENV (GLOBAL_VENV=True), else
# the system's; constraints always applied
function pip_install {
    local cmd_pip
    if [[ -n ${PIP_VIRTUAL_ENV:-} && -d $PIP_VIRTUAL_ENV ]]; then
        cmd_pip=$PIP_VIRTUAL_ENV/bin/pip
    elif [[ $GLOBAL_VENV == True && -d $DEVSTACK_VENV ]]; then
        cmd_pip=$DEVSTACK_VENV/bin/pip
    else
        cmd_pip="sudo -H python$PYTHON3_VERSION -m pip"
    fi
    local project_dir=${!#}
    if [[ $project_dir == /* && ! -d $project_dir ]]; then
        err $LINENO "pip_install: no such directory: $project_dir"
        return 1
    fi
    echo "pip_install: $cmd_pip install -c $REQUIREMENTS_DIR/upper-constraints.txt $*" >> "$FAKE_DEVSTACK_LOG"
}

# install_package <package>... - record the distribution packages devstack
# would install
function install_package {
    echo "install_package: $*" >> "$FAKE_DEVSTACK_LOG"
}

# setup_develop <project dir> [extras] - "pip install -e" through pip_install
function setup_develop {
    local project_dir=$1 extras=${2:-}
    pip_install -e "$project_dir${extras:+[$extras]}"
}


# The run
# -------

# run_plugin <mode> [<phase>] - source plugin.sh as devstack's run_plugins
# does, with xtrace on as in stack.sh; fail if the plugin loses xtrace
function run_plugin {
    echo "phase: $*" >> "$FAKE_DEVSTACK_LOG"
    set -o xtrace
    # shellcheck source=/dev/null
    source "$PLUGIN_DIR/devstack/plugin.sh" "$@"
    if [[ ! -o xtrace ]]; then
        die $LINENO "plugin.sh $* did not restore xtrace"
    fi
    set +o xtrace
}

# start_nova_compute - what devstack's lib/nova does to the configuration
# when it starts n-cpu
function start_nova_compute {
    echo "start n-cpu: cp $NOVA_CONF $NOVA_CPU_CONF" >> "$FAKE_DEVSTACK_LOG"
    cp "$NOVA_CONF" "$NOVA_CPU_CONF"
}

exec {_xtrace_fd}>>"${FAKE_DEVSTACK_XTRACE:-/dev/null}"
BASH_XTRACEFD=$_xtrace_fd

if [[ -n ${FAKE_DEVSTACK_LOCALRC:-} ]]; then
    # shellcheck source=/dev/null
    source "$FAKE_DEVSTACK_LOCALRC"
fi
# shellcheck source=/dev/null
source "$PLUGIN_DIR/devstack/settings"

case "${1:-}" in
    stack)
        run_plugin stack pre-install
        run_plugin stack install
        run_plugin stack post-config
        if is_service_enabled n-cpu; then
            start_nova_compute
        fi
        run_plugin stack extra
        run_plugin stack test-config
        ;;
    unstack)
        run_plugin unstack
        ;;
    clean)
        run_plugin clean
        ;;
esac
