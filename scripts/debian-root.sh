# shellcheck shell=bash
# Sourced by scripts/test-package and scripts/test-fresh (bash): makes a
# throwaway Debian 12 root with debootstrap, from a download cached in
# target/debootstrap/ (debootstrap's --make-tarball, one per package list).
#
#   debian_mirror                 the Debian archive to use: $FRAMEFLUSH_DEBIAN_MIRROR,
#                                 else the first one apt is configured with here,
#                                 else http://deb.debian.org/debian
#   debian_root ROOT INCLUDE LOG  unpacks bookworm (minbase plus the packages of
#                                 INCLUDE, comma-separated) into ROOT, downloading
#                                 the cache first when it is missing; LOG gets
#                                 debootstrap's output. Prints nothing; on failure
#                                 prints the log's tail and returns 1.
#
# The caller runs from the repository's top directory (target/ is there).

DEBIAN_SUITE=bookworm

debian_mirror() {
	if [ -n "${FRAMEFLUSH_DEBIAN_MIRROR:-}" ]; then
		echo "$FRAMEFLUSH_DEBIAN_MIRROR"
		return
	fi
	# The first Debian archive apt is configured with (deb822 or one-line).
	local m
	m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ { print $2 }' | grep -E '/debian/?$' | head -n 1 || true)
	[ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' | grep -E '/debian/?$' | head -n 1 || true)
	echo "${m:-http://deb.debian.org/debian}"
}

debian_root() {
	local root=$1 include=$2 log=$3 cache
	cache=$(pwd)/target/debootstrap/$DEBIAN_SUITE-minbase-${include//,/-}.tgz
	if [ ! -s "$cache" ]; then
		echo "downloading $DEBIAN_SUITE (minbase, $include) from $(debian_mirror) for $cache" >&2
		mkdir -p "$(dirname "$cache")"
		rm -rf "$root.download"
		if ! debootstrap --variant=minbase --include="$include" --make-tarball="${cache%.tgz}.part.tgz" \
			"$DEBIAN_SUITE" "$root.download" "$(debian_mirror)" >"$log" 2>&1; then
			rm -rf "$root.download"
			tail -n 20 "$log" >&2
			echo "debootstrap --make-tarball failed (above)" >&2
			return 1
		fi
		rm -rf "$root.download"
		mv "${cache%.tgz}.part.tgz" "$cache"
	fi
	if ! debootstrap --variant=minbase --unpack-tarball="$cache" "$DEBIAN_SUITE" "$root" "$(debian_mirror)" >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		echo "debootstrap into $root failed (above); remove $cache if it is damaged" >&2
		return 1
	fi
}
