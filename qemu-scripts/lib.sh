# shellcheck shell=bash
# Common helpers for the qemu-scripts. Sourced, never run.
#
# Conventions: every script prints what it does on stderr (prefixed with its
# name) and keeps stdout for its result (a path, or shell assignments), so
# callers can capture it. Everything fetched or built is cached under
# $CENALLOC_CACHE (default ~/.cache/cenalloc).

CENALLOC_CACHE="${CENALLOC_CACHE:-$HOME/.cache/cenalloc}"
QEMU_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$QEMU_SCRIPTS_DIR/.." && pwd)"
SCRIPT_NAME="${0##*/}"

log() {
	printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# Prints the command, then runs it.
run() {
	log "+ $*"
	"$@"
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		run "$@"
	elif command -v sudo >/dev/null 2>&1; then
		run sudo "$@"
	else
		die "need root for: $* (no sudo available)"
	fi
}

# Codename of the host distribution (bookworm on Debian 12).
host_codename() {
	local codename=""
	if [ -r /etc/os-release ]; then
		# shellcheck disable=SC1091
		codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
	fi
	[ -n "$codename" ] || die "cannot tell the distribution codename from /etc/os-release"
	printf '%s\n' "$codename"
}

# Prints the Debian archive URI already configured for the host's main suite,
# read from the apt sources (deb822 first, then one-line format). Scripts that
# add suites or fetch packages reuse it, so no host name is ever spelled out.
apt_archive_uri() {
	local codename uri="" file apt_etc="${CENALLOC_APT_ETC:-/etc/apt}"
	codename="$(host_codename)"
	for file in "$apt_etc/sources.list.d/debian.sources" "$apt_etc"/sources.list.d/*.sources; do
		[ -r "$file" ] || continue
		uri="$(awk -v suite="$codename" '
			BEGIN { RS = ""; FS = "\n" }
			{
				types = ""; uris = ""; suites = ""; enabled = "yes"
				for (i = 1; i <= NF; i++) {
					line = $i
					if (line ~ /^[ \t]*#/) continue
					split(line, kv, ":")
					key = tolower(kv[1])
					value = substr(line, length(kv[1]) + 2)
					if (key == "types") types = value
					else if (key == "uris") uris = value
					else if (key == "suites") suites = value
					else if (key == "enabled") enabled = tolower(value)
				}
				if (enabled ~ /no/) next
				if (types !~ /(^|[ \t])deb([ \t]|$)/) next
				if ((" " suites " ") !~ ("[ \t]" suite "[ \t]")) next
				n = split(uris, u, /[ \t]+/)
				for (j = 1; j <= n; j++) if (u[j] != "") { print u[j]; exit }
			}' "$file")"
		[ -n "$uri" ] && break
	done
	if [ -z "$uri" ] && [ -r "$apt_etc/sources.list" ]; then
		uri="$(awk -v suite="$codename" '
			$1 == "deb" {
				n = 2
				if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
				if ($(n + 1) == suite) { print $n; exit }
			}' "$apt_etc/sources.list")"
	fi
	[ -n "$uri" ] || die "no apt source for suite '$codename' found in $apt_etc/sources.list{,.d}"
	printf '%s\n' "${uri%/}"
}

# cache_lock NAME: holds an exclusive lock on $CENALLOC_CACHE/NAME.lock until
# the script exits, so that two runs never fill the same cache entry at once.
cache_lock() {
	local fd
	mkdir -p "$CENALLOC_CACHE"
	exec {fd}>"$CENALLOC_CACHE/$1.lock"
	if ! flock -n "$fd"; then
		log "waiting for another run to release $CENALLOC_CACHE/$1.lock"
		flock "$fd"
	fi
}

# apt_waiting CMD...: runs an apt-get command; while another apt or dpkg
# holds the lock it needs (a second run installing at the same time, a
# daily update), tries again every 5 s for up to 10 min instead of failing.
# apt's own DPkg::Lock::Timeout covers dpkg's lock, not the lists' of
# apt-get update.
apt_waiting() {
	local err status tries=0
	err="$(mktemp)"
	while :; do
		status=0
		"$@" 2>"$err" || status=$?
		cat "$err" >&2
		if [ "$status" -ne 0 ] && [ "$tries" -lt 120 ] &&
			grep -q -e 'Could not get lock' -e 'Unable to acquire the dpkg frontend lock' "$err"; then
			tries=$((tries + 1))
			log "another apt or dpkg holds its lock: again in 5 s ($tries of 120)"
			sleep 5
			continue
		fi
		rm -f "$err"
		return "$status"
	done
}

APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" -eq 0 ]; then
		apt_waiting as_root apt-get update -q >&2
		APT_UPDATED=1
	fi
}

# ensure_packages PKG... : installs the Debian packages that are not installed.
ensure_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$pkg")
		fi
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	log "installing missing packages: ${missing[*]}"
	apt_update_once
	apt_waiting as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# Makes sure the host's apt knows the <codename>-backports suite, adding it
# with the archive URI already configured when it is missing.
ensure_backports_suite() {
	local codename suite uri file=/etc/apt/sources.list.d/cenalloc-backports.sources
	codename="$(host_codename)"
	suite="$codename-backports"
	if grep -qsE "^[^#]*([[:space:]]|:)$suite([[:space:]]|$)" \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
		return 0
	fi
	uri="$(apt_archive_uri)"
	log "adding apt suite $suite (archive $uri) in $file"
	local tmp
	tmp="$(mktemp)"
	cat >"$tmp" <<EOF
Types: deb
URIs: $uri
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	as_root install -m 0644 "$tmp" "$file"
	rm -f "$tmp"
	APT_UPDATED=0
	apt_update_once
}

# apt_fetch_unpack DEST PKG... : downloads the .debs into $DEST/debs (kept as
# a cache) and unpacks them with dpkg -x into $DEST/root.
apt_fetch_unpack() {
	local dest="$1" pkg deb
	shift
	mkdir -p "$dest/debs" "$dest/root"
	for pkg in "$@"; do
		if ! compgen -G "$dest/debs/${pkg}_*.deb" >/dev/null; then
			apt-cache show "$pkg" >/dev/null 2>&1 || apt_update_once
			(cd "$dest/debs" && run apt-get -o APT::Sandbox::User=root download -q "$pkg" >&2)
		fi
		for deb in "$dest/debs/${pkg}"_*.deb; do
			run dpkg-deb -x "$deb" "$dest/root"
		done
	done
}

# The guest kernels (qemu-scripts/get-kernel --kernel SERIES); the first is
# the default. test-all covers them all (CENALLOC_KERNELS narrows it).
KERNEL_SERIES_ALL="6.12 6.1 testing debug"

kernel_series_check() {
	case " $KERNEL_SERIES_ALL " in
	*" $1 "*) ;;
	*) die "unknown kernel series '$1' (one of: $KERNEL_SERIES_ALL)" ;;
	esac
}

# kernel_make DIR MAKE-ARGS... : runs make -C DIR for the kernel that
# get-kernel described (KBUILD_ROOT from its output). With an empty
# KBUILD_ROOT that is the host's make; otherwise make runs chrooted in that
# build root (the testing series: its headers need the compiler they were
# built with), in a private mount namespace where DIR is bind-mounted at the
# same path and /dev and /proc are mounted. The kernel build tree has the
# same path inside the root as outside (get-kernel makes it so).
kernel_make() {
	local dir="$1" ns=(unshare --mount --propagation private)
	shift
	if [ -z "${KBUILD_ROOT:-}" ]; then
		run make -C "$dir" "$@"
		return
	fi
	dir="$(cd "$dir" && pwd -P)"
	[ "$(id -u)" -eq 0 ] || ns=(unshare --map-root-user --mount --propagation private)
	# shellcheck disable=SC2016 # expanded by the inner shell
	run "${ns[@]}" sh -c '
		set -e
		root="$1" dir="$2"
		shift 2
		mkdir -p "$root$dir"
		mount --rbind /dev "$root/dev"
		mount -t proc proc "$root/proc"
		mount --bind "$dir" "$root$dir"
		exec chroot "$root" make -C "$dir" "$@"' sh "$KBUILD_ROOT" "$dir" "$@"
}

# sync_driver_sources SRC DST: makes DST a copy of the kernel-module sources
# of the driver directory SRC (its *.c, *.h, Kbuild, Makefile and include/;
# not the selftests), so that each kernel builds the modules in a directory
# of its own. Unchanged files keep their time stamps (make rebuilds only what
# changed); files gone from SRC are removed from DST.
sync_driver_sources() {
	local src="$1" dst="$2" file rel
	mkdir -p "$dst"
	while IFS= read -r -d '' file; do
		rel="${file#"$src"/}"
		if ! cmp -s "$file" "$dst/$rel"; then
			mkdir -p "$(dirname "$dst/$rel")"
			cp -p "$file" "$dst/$rel"
		fi
	done < <(find "$src" -maxdepth 1 -type f \( -name '*.[ch]' -o -name Kbuild -o -name Makefile \) -print0
		[ -d "$src/include" ] && find "$src/include" -type f -print0)
	while IFS= read -r -d '' file; do
		rel="${file#"$dst"/}"
		[ -e "$src/$rel" ] || rm -f "$file"
	done < <(find "$dst" -maxdepth 1 -type f -name '*.[ch]' ! -name '*.mod.c' -print0
		[ -d "$dst/include" ] && find "$dst/include" -type f -print0)
}

# Size in bytes of struct cenalloc_config, computed by compiling a tiny C
# program against the protocol header (the single source of truth).
config_space_size() {
	local header="${CENALLOC_DRIVER_DIR:-$REPO_ROOT/guest-driver}/cenalloc_proto.h" tmp size
	[ -r "$header" ] || die "missing $header"
	tmp="$(mktemp -d)"
	cat >"$tmp/size.c" <<'EOF'
#include <stdio.h>
#include "cenalloc_proto.h"
int main(void)
{
	printf("%zu\n", sizeof(struct cenalloc_config));
	return 0;
}
EOF
	if ! gcc -std=gnu11 -I"$(dirname "$header")" -o "$tmp/size" "$tmp/size.c" >&2; then
		rm -rf "$tmp"
		die "cannot compile a probe against $header"
	fi
	size="$("$tmp/size")"
	rm -rf "$tmp"
	printf '%s\n' "$size"
}

# Builds cenallocd and cenallocctl (cargo build --release) and prints the
# directory that holds them: target/release. "build_cenallocd
# fault-injection" builds them with the test-only feature (a daemon whose
# --fault and --fault-file lie to the guest on purpose) into a target
# directory of their own, target/fault-injection/release: target/release,
# where a user's `cargo build --release` puts cenallocd, never holds that
# build (tests/scripts.rs).
build_cenallocd() {
	local features=() target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
	case "${1:-}" in
	release) ;;
	fault-injection)
		features=(--features fault-injection)
		target="$target/fault-injection"
		;;
	*) die "build_cenallocd: release or fault-injection, not '${1:-}'" ;;
	esac
	log "building cenallocd and cenallocctl ${features[*]} into $target"
	(cd "$REPO_ROOT" && run env CARGO_TARGET_DIR="$target" \
		cargo build --release --bin cenallocd --bin cenallocctl "${features[@]}" >&2) ||
		return 1
	printf '%s\n' "$target/release"
}

# build_example NAME: builds examples/NAME.rs (a debug build, for probes
# that no test runs) into the same target directory; prints its path.
build_example() {
	local name="${1:?build_example: which example}"
	local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
	log "building example $name into $target"
	(cd "$REPO_ROOT" && run nice -n 10 env CARGO_TARGET_DIR="$target" \
		cargo build --example "$name" >&2) ||
		return 1
	printf '%s\n' "$target/debug/examples/$name"
}
