#!/usr/bin/env bash
# Set up everything circuitsim needs on a Debian/Ubuntu machine. Idempotent: a re-run that
# finds everything in place changes nothing and takes about a second.
#
#   1. ngspice >= 42 built with KLU, plus its shared library libngspice.so.0.
#      Debian 12 (bookworm) ships ngspice 39 without KLU, so there the script enables Debian's
#      own bookworm-backports suite, for the same archive URI that the machine's apt sources
#      already use (never a hard-coded mirror), and installs ngspice + libngspice0 from it.
#      Newer releases (Debian 13+, Ubuntu 24.04+) install them from their own archive.
#   2. A virtualenv at .venv in the repository root, with torch==2.13.0 (pinned: a bare torch
#      requirement can pull a multi-GB CUDA build) and then the project, editable, with its
#      test extras. A stamp in .venv skips pip while pyproject.toml and this script are unchanged.
#
# Usage:
#   scripts/setup.sh                          do the whole set-up
#   scripts/setup.sh --ngspice-only           only step 1
#   scripts/setup.sh --print-backports-source print the deb822 stanza that would be written to
#                                             enable bookworm-backports, and exit (changes nothing)
#
# Environment overrides (used by the tests):
#   CIRCUITSIM_APT_DIR           apt's sources directory   (default /etc/apt/sources.list.d)
#   CIRCUITSIM_APT_SOURCES_LIST  the classic sources.list  (default: sources.list beside that directory)
#   CIRCUITSIM_OS_RELEASE        the os-release file       (default /etc/os-release)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APT_DIR=${CIRCUITSIM_APT_DIR:-/etc/apt/sources.list.d}
SOURCES_LIST=${CIRCUITSIM_APT_SOURCES_LIST:-$(dirname "$APT_DIR")/sources.list}
OS_RELEASE=${CIRCUITSIM_OS_RELEASE:-/etc/os-release}
if [[ -z ${CIRCUITSIM_OS_RELEASE:-} && ! -r $OS_RELEASE && -r /usr/lib/os-release ]]; then
    OS_RELEASE=/usr/lib/os-release
fi
BACKPORTS_FILE_NAME=circuitsim-backports.sources
MIN_NGSPICE=42
TORCH_REQ="torch==2.13.0"
NGSPICE_PACKAGES="ngspice libngspice0"

log() { printf 'setup: %s\n' "$*" >&2; }
die() {
    printf 'setup: ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# os-release
# ---------------------------------------------------------------------------------------------

# os_field KEY: the value of KEY in the os-release file (quotes removed), or empty.
os_field() {
    local key=$1 line value
    [[ -r $OS_RELEASE ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "$key="* ]]; then
            value=${line#*=}
            value=${value%$'\r'}
            value=${value#[\"\']}
            value=${value%[\"\']}
            printf '%s\n' "$value"
            return 0
        fi
    done <"$OS_RELEASE"
}

# ---------------------------------------------------------------------------------------------
# bookworm-backports: derive the source stanza from the machine's own apt sources
# ---------------------------------------------------------------------------------------------

# derive_backports_source CODENAME
#   Reads the classic sources.list, then every *.list and *.sources file of the apt sources
#   directory in apt's (alphabetical) order.
#   exit 0: prints the deb822 stanza that enables CODENAME-backports for the URIs of the first
#           enabled "deb" entry whose suites include CODENAME itself (security archive ignored),
#           keeping that entry's Signed-By.
#   exit 3: CODENAME-backports is already enabled; prints the file that enables it.
#   exit 4: no entry for the CODENAME main archive was found; prints nothing.
derive_backports_source() {
    local codename=$1 f
    local files=()
    [[ -f $SOURCES_LIST ]] && files+=("$SOURCES_LIST")
    if [[ -d $APT_DIR ]]; then
        for f in "$APT_DIR"/*; do
            case $f in
            *.list | *.sources) [[ -f $f ]] && files+=("$f") ;;
            esac
        done
    fi
    ((${#files[@]} > 0)) || return 4
    # shellcheck disable=SC2016
    awk -v codename="$codename" -v bp="$codename-backports" '
        function trim(s) { sub(/^[ \t\r]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
        function has_word(list, w,    n, a, i) {
            n = split(list, a, /[ \t\n]+/)
            for (i = 1; i <= n; i++) if (a[i] == w) return 1
            return 0
        }
        function consider(uris, suites, signedby, file) {
            gsub(/[ \t\n]+/, " ", uris); uris = trim(uris)
            if (uris == "") return
            if (has_word(suites, bp) && enabled_in == "") enabled_in = file
            if (has_word(suites, codename) && main_uris == "" && uris !~ /security/ && uris !~ /^cdrom:/) {
                main_uris = uris; main_sb = signedby; main_file = file
            }
        }
        function flush(    en) {
            if (nkeys > 0) {
                en = tolower(trim(fld["enabled"]))
                if (en != "no" && en != "false" && en != "0" && has_word(fld["types"], "deb"))
                    consider(fld["uris"], fld["suites"], fld["signed-by"], cur_file)
            }
            split("", fld); nkeys = 0; lastkey = ""
        }
        FNR == 1 { flush(); is822 = (FILENAME ~ /\.sources$/) }
        is822 {
            line = $0; sub(/\r$/, "", line)
            if (line ~ /^#/) next
            if (line ~ /^[ \t]*$/) { flush(); next }
            if (line ~ /^[ \t]/) { if (lastkey != "") fld[lastkey] = fld[lastkey] "\n" line; next }
            i = index(line, ":")
            if (i == 0) next
            key = tolower(trim(substr(line, 1, i - 1)))
            fld[key] = trim(substr(line, i + 1)); lastkey = key
            if (nkeys++ == 0) cur_file = FILENAME
            next
        }
        {
            line = $0; sub(/#.*/, "", line); line = trim(line)
            if (line == "") next
            n = split(line, t, /[ \t]+/)
            if (t[1] != "deb") next
            i = 2; sb = ""
            if (substr(t[2], 1, 1) == "[") {
                opts = ""
                for (; i <= n; i++) { opts = opts " " t[i]; if (t[i] ~ /\]$/) { i++; break } }
                gsub(/[][]/, " ", opts)
                m = split(opts, o, /[ \t]+/)
                for (j = 1; j <= m; j++) if (tolower(o[j]) ~ /^signed-by=/) sb = substr(o[j], 11)
            }
            if (i + 1 <= n) consider(t[i], t[i + 1], sb, FILENAME)
        }
        END {
            flush()
            if (enabled_in != "") { print enabled_in; exit 3 }
            if (main_uris == "") exit 4
            print "# Written by circuitsim scripts/setup.sh: the Debian suite " bp " (ngspice >= 42 with KLU),"
            print "# for the archive that " main_file " uses."
            print "Types: deb"
            print "URIs: " main_uris
            print "Suites: " bp
            print "Components: main"
            if (main_sb != "") {
                if (substr(main_sb, 1, 1) == "\n") print "Signed-By:" main_sb
                else print "Signed-By: " main_sb
            }
        }
    ' "${files[@]}"
}

print_backports_source() {
    local id codename out rc
    id=$(os_field ID)
    codename=$(os_field VERSION_CODENAME)
    if [[ $id != debian || $codename != bookworm ]]; then
        log "no backports needed on ${id:-unknown} ${codename:-unknown} (only Debian 12 bookworm needs them)"
        return 0
    fi
    if out=$(derive_backports_source "$codename"); then rc=0; else rc=$?; fi
    case $rc in
    0) printf '%s\n' "$out" ;;
    3) log "$codename-backports is already enabled in $out; nothing to write" ;;
    4) die "found no enabled 'deb' source for Debian's $codename main archive in $SOURCES_LIST or $APT_DIR/*.{list,sources}" ;;
    *) die "could not read the apt sources (awk exited $rc)" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# ngspice
# ---------------------------------------------------------------------------------------------

NGSPICE_PROBLEM=""

# ngspice_ok: true when ngspice >= MIN_NGSPICE with KLU and libngspice.so.0 are installed;
# otherwise sets NGSPICE_PROBLEM to the reason.
ngspice_ok() {
    local out ver ldconfig libs libstat libver
    NGSPICE_PROBLEM=""
    if ! command -v ngspice >/dev/null 2>&1; then
        NGSPICE_PROBLEM="ngspice is not installed"
        return 1
    fi
    out=$(ngspice --version 2>&1 </dev/null || true)
    ver=""
    [[ $out =~ ngspice-([0-9]+) ]] && ver=${BASH_REMATCH[1]}
    if [[ -z $ver ]]; then
        NGSPICE_PROBLEM="cannot read the version from 'ngspice --version'"
        return 1
    fi
    if ((ver < MIN_NGSPICE)); then
        NGSPICE_PROBLEM="ngspice $ver is too old (need >= $MIN_NGSPICE)"
        return 1
    fi
    if ! grep -q 'KLU' <<<"$out"; then
        NGSPICE_PROBLEM="ngspice $ver is not built with the KLU solver"
        return 1
    fi
    ldconfig=$(PATH="$PATH:/sbin:/usr/sbin" command -v ldconfig || true)
    # Read the whole cache first: `ldconfig -p | grep -q` would let grep's early exit kill
    # ldconfig with SIGPIPE, which pipefail reports as a failure.
    libs=""
    [[ -n $ldconfig ]] && libs=$("$ldconfig" -p 2>/dev/null || true)
    if ! grep -q 'libngspice\.so\.0' <<<"$libs"; then
        NGSPICE_PROBLEM="the shared library libngspice.so.0 is not installed"
        return 1
    fi
    # A Debian-packaged library must be as new as the program (not stable's 39 beside 46).
    if command -v dpkg-query >/dev/null 2>&1; then
        libstat=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' libngspice0 2>/dev/null || true)
        if [[ $libstat == ii* ]]; then
            libver=${libstat##* }
            libver=${libver#*:}
            libver=${libver%%[!0-9]*}
            if [[ -n $libver ]] && ((libver < MIN_NGSPICE)); then
                NGSPICE_PROBLEM="libngspice0 $libver is too old (need >= $MIN_NGSPICE)"
                return 1
            fi
        fi
    fi
    NGSPICE_VERSION=$ver
    return 0
}

SUDO=()
need_root() {
    if [[ $(id -u) == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
        log "not root: using sudo for apt"
    else
        die "$1; not root and no sudo: as root, install ngspice >= $MIN_NGSPICE built with KLU and its shared library (Debian/Ubuntu packages: $NGSPICE_PACKAGES; on Debian 12 from bookworm-backports)"
    fi
}

as_root() { "${SUDO[@]}" "$@"; }
apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@" >&2; }

install_ngspice() {
    local reason=$1 id codename stanza rc tmp target
    command -v apt-get >/dev/null 2>&1 ||
        die "$reason; this is not a Debian/Ubuntu machine: install ngspice >= $MIN_NGSPICE built with KLU and libngspice.so.0 by hand"
    need_root "$reason"
    id=$(os_field ID)
    codename=$(os_field VERSION_CODENAME)
    if [[ $id == debian && $codename == bookworm ]]; then
        if stanza=$(derive_backports_source "$codename"); then rc=0; else rc=$?; fi
        case $rc in
        0)
            target=$APT_DIR/$BACKPORTS_FILE_NAME
            log "enabling $codename-backports in $target"
            tmp=$(mktemp)
            printf '%s\n' "$stanza" >"$tmp"
            as_root install -m 0644 "$tmp" "$target" || {
                rm -f "$tmp"
                die "cannot write $target"
            }
            rm -f "$tmp"
            ;;
        3) log "$codename-backports is already enabled in $stanza" ;;
        4) die "$reason; found no apt source for Debian's $codename main archive in $SOURCES_LIST or $APT_DIR, so cannot enable $codename-backports: add it by hand, then install $NGSPICE_PACKAGES from it" ;;
        *) die "could not read the apt sources (awk exited $rc)" ;;
        esac
        log "apt-get update"
        apt_get update || die "apt-get update failed"
        log "installing $NGSPICE_PACKAGES from $codename-backports"
        # shellcheck disable=SC2086
        apt_get install -y -t "$codename-backports" $NGSPICE_PACKAGES ||
            die "apt-get install -t $codename-backports $NGSPICE_PACKAGES failed"
    else
        log "apt-get update"
        apt_get update || die "apt-get update failed"
        log "installing $NGSPICE_PACKAGES from ${id:-this release}'s archive"
        # shellcheck disable=SC2086
        apt_get install -y $NGSPICE_PACKAGES || die "apt-get install $NGSPICE_PACKAGES failed"
    fi
}

setup_ngspice() {
    if ngspice_ok; then
        log "ngspice $NGSPICE_VERSION with KLU and libngspice.so.0: ok"
        return 0
    fi
    local reason=$NGSPICE_PROBLEM
    log "$reason: installing ngspice"
    install_ngspice "$reason"
    hash -r
    ngspice_ok ||
        die "after installing, still: $NGSPICE_PROBLEM. circuitsim needs ngspice >= $MIN_NGSPICE built with KLU and libngspice.so.0 (Debian 12 gets it from bookworm-backports; Debian 13+ and Ubuntu 24.04+ ship it; older releases do not)"
    log "ngspice $NGSPICE_VERSION with KLU and libngspice.so.0: installed"
}

# ---------------------------------------------------------------------------------------------
# Python virtualenv
# ---------------------------------------------------------------------------------------------

VENV=$ROOT/.venv
VPY=$VENV/bin/python
STAMP=$VENV/.circuitsim-setup-stamp

apt_install_python_venv() {
    command -v apt-get >/dev/null 2>&1 || return 1
    need_root "python3 cannot create a virtualenv"
    log "installing python3 and python3-venv"
    apt_get update || return 1
    apt_get install -y python3 python3-venv || return 1
    hash -r
}

venv_python_works() { [[ -x $VPY ]] && "$VPY" -c 'import sys' >/dev/null 2>&1; }

make_venv() {
    local py
    if venv_python_works && "$VPY" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if [[ -e $VENV ]] && ! venv_python_works; then
        log "$VENV is broken (its python does not run): recreating it"
        rm -rf "$VENV"
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install_python_venv || die "python3 is missing: install python3 (>= 3.10) and python3-venv"
    fi
    py=$(command -v python3)
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$("$py" --version 2>&1) is too old: circuitsim needs Python >= 3.10"
    log "creating the virtualenv $VENV with $("$py" --version 2>&1)"
    if ! "$py" -m venv "$VENV" >&2; then
        log "python3 -m venv failed (venv/ensurepip missing?): installing python3-venv and retrying"
        apt_install_python_venv || die "cannot create $VENV: install python3-venv (Debian/Ubuntu) and re-run"
        "$py" -m venv "$VENV" >&2 || die "cannot create the virtualenv $VENV"
    fi
    "$VPY" -m pip --version >/dev/null 2>&1 || die "the virtualenv $VENV has no pip"
}

wanted_stamp() {
    {
        printf '%s\n' "$ROOT"
        cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"
        "$VPY" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

# The installed packages still look right (cheap: metadata only, no imports). -I keeps the
# repository's own circuitsim.egg-info (cwd) out of the metadata search.
venv_packages_ok() {
    "$VPY" -I - "$ROOT" >/dev/null 2>&1 <<'EOF'
import json, sys
from importlib import metadata
from pathlib import Path
assert metadata.version("torch").split("+")[0] == "2.13.0"
metadata.version("pytest")
dist = metadata.distribution("circuitsim")
url = json.loads(dist.read_text("direct_url.json"))["url"]
assert url.rstrip("/") == Path(sys.argv[1]).as_uri().rstrip("/"), url
EOF
}

setup_python() {
    make_venv
    local want
    want=$(wanted_stamp)
    if [[ -f $STAMP && $(<"$STAMP") == "$want" ]] && venv_packages_ok; then
        log "virtualenv .venv is up to date (pyproject.toml unchanged)"
        return 0
    fi
    rm -f "$STAMP"
    log "installing $TORCH_REQ into .venv"
    "$VPY" -m pip install -q "$TORCH_REQ" >&2 || die "pip install $TORCH_REQ failed"
    log "installing circuitsim (editable, with test extras) into .venv"
    (cd "$ROOT" && "$VPY" -m pip install -q -e '.[test]' >&2) || die "pip install -e '.[test]' failed"
    venv_packages_ok || die "the virtualenv's packages are not as expected after pip install"
    printf '%s\n' "$want" >"$STAMP"
    log "virtualenv .venv ready"
}

# ---------------------------------------------------------------------------------------------

main() {
    case ${1:-} in
    --print-backports-source)
        print_backports_source
        return
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
        return
        ;;
    --ngspice-only)
        setup_ngspice
        return
        ;;
    "") ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
    setup_ngspice
    setup_python
    log "done"
}

main "$@"
