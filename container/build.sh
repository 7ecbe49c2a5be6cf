#!/usr/bin/env bash
# Builds the regcache container image from an already built binary.
#
#   container/build.sh [--binary PATH] [--tag TAG] [--strip]
#
# --binary  the regcache to package (default target/release/regcache; relative paths are
#           taken from the current directory). It must run on this machine: its shared
#           libraries are found with ldd and copied from here.
# --tag     the image name (default localhost/regcache:<version the binary reports>).
# --strip   strip debug info from the packaged copy (smaller image, no file:line in
#           panic backtraces).
#
# The build context is a temporary directory holding only what the image contains: the
# binary, the dynamic loader and libraries ldd lists, passwd/group/nsswitch.conf, the
# host's CA bundle and the copyright files of the packages those came from. Then
# `podman build` (or `buildah bud`) runs container/Containerfile on it. Needs no network.
# With SOURCE_DATE_EPOCH set, the image's times are that instant and two builds of the
# same binary on the same host give the same image digest. Works from any cwd.
set -euo pipefail

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    echo "build.sh: $*" >&2
    exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
binary=$repo/target/release/regcache
tag=
strip=0
while (($# > 0)); do
    case $1 in
    --binary)
        (($# >= 2)) || die "--binary needs a path"
        binary=$2
        shift 2
        ;;
    --tag)
        (($# >= 2)) || die "--tag needs a name"
        tag=$2
        shift 2
        ;;
    --strip)
        strip=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -f $binary && -x $binary ]] ||
    die "$binary is not an executable file (build it first: cargo build --release)"

if command -v podman >/dev/null; then
    builder=(podman build)
elif command -v buildah >/dev/null; then
    builder=(buildah bud)
else
    die "neither podman nor buildah is installed"
fi

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca_bundle ]] || die "$ca_bundle is missing (install Debian's ca-certificates)"

# "regcache 0.1.0" -> 0.1.0; this also proves the binary runs here.
version=$("$binary" --version | awk '{print $2}') || die "$binary --version failed"
[[ -n $version ]] || die "$binary --version printed no version"
tag=${tag:-localhost/regcache:$version}
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)

ctx=$(mktemp -d "${TMPDIR:-/tmp}/regcache-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
# var/cache is staged so that only var/cache/regcache (from cache/) is the daemon's.
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/regcache" "$root/var/cache" "$ctx/cache"

if ((strip)); then
    strip --strip-debug -o "$root/usr/local/bin/regcache" "$binary"
else
    cp "$binary" "$root/usr/local/bin/regcache"
fi
chmod 0755 "$root/usr/local/bin/regcache"

# ldd prints "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" for a library and
# "/lib64/ld-linux-x86-64.so.2 (0x...)" for the loader; each file goes to the path the
# binary looks for it at, with symlinks resolved. linux-vdso is the kernel's own.
libs=()
if ldd_out=$(ldd "$binary" 2>&1); then
    if grep -q 'not found' <<<"$ldd_out"; then
        die "ldd cannot find every library of $binary:"$'\n'"$ldd_out"
    fi
    while read -r first arrow path _; do
        if [[ $arrow == '=>' && $path == /* ]]; then
            libs+=("$path")
        elif [[ $first == /* ]]; then
            libs+=("$first")
        fi
    done <<<"$ldd_out"
elif ! grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
    die "ldd $binary failed: $ldd_out"
fi
for lib in "${libs[@]}"; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cp "$ca_bundle" "$root$ca_bundle"
chmod 0644 "$root$ca_bundle"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
regcache:x:65532:65532:regcache:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
regcache:x:65532:
EOF
# Without this file glibc asks DNS before /etc/hosts.
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF

# The libraries and certificates are redistributed: their licences go with them.
if command -v dpkg-query >/dev/null; then
    for file in "${libs[@]}" "$ca_bundle"; do
        owner=$(dpkg-query -S "$file" 2>/dev/null || dpkg-query -S "$(realpath "$file")" 2>/dev/null) || true
        # ca-certificates.crt is generated, so no package owns it.
        [[ $file == "$ca_bundle" ]] && owner=ca-certificates:
        package=${owner%%:*}
        copyright=/usr/share/doc/$package/copyright
        if [[ -n $package && -f $copyright ]]; then
            mkdir -p "$root/usr/share/doc/$package"
            cp "$copyright" "$root/usr/share/doc/$package/copyright"
        else
            echo "build.sh: warning: no copyright file found for $file" >&2
        fi
    done
else
    echo "build.sh: warning: no dpkg here; the image carries no copyright files for its libraries" >&2
fi

cp "$here/Containerfile" "$ctx/Containerfile"

build_args=(
    --format oci
    --layers=false
    --file "$ctx/Containerfile"
    --tag "$tag"
    --build-arg "VERSION=$version"
    --build-arg "REVISION=$revision"
)
if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
    build_args+=(--timestamp "$SOURCE_DATE_EPOCH")
fi
echo "build.sh: building $tag from $binary (${#libs[@]} shared libraries)"
"${builder[@]}" "${build_args[@]}" "$ctx"

if [[ ${builder[0]} == podman ]]; then
    size=$(podman image inspect --format '{{.Size}}' "$tag")
    echo "build.sh: built $tag, $((size / 1000 / 1000)) MB"
fi
