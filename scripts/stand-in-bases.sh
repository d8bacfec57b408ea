#!/usr/bin/env bash
# For machines that cannot reach Docker Hub (only Debian's archive, crates.io and npm): makes
# local stand-ins of the Dockerfile's three base images, so that `podman build` can check the
# Dockerfile itself — its stages, the non-root user, the HEALTHCHECK — and measure the image.
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm
#   node:20-bookworm-slim  that, plus this machine's Node.js 20 (the nodejs package's files)
#   rust:1-bookworm        that, plus gcc/make/pkg-config/git and this machine's stable Rust
# The two build stages' stand-ins also trust this machine's extra certificate authorities
# (/usr/local/share/ca-certificates: an egress proxy that intercepts TLS), so npm and cargo
# can fetch; the runtime image's base does not. They are tagged with the official names, so
# the Dockerfile stays as users build it; never push them. Idempotent: an image already present is kept. Needs root, podman and debootstrap.
#   PODMAN="podman --runtime runc --cgroup-manager cgroupfs" scripts/stand-in-bases.sh
set -euo pipefail
PODMAN="${PODMAN:-podman}"
work="${CACHEWARDEN_TOOLS:-/var/tmp/cachewarden-tools}/stand-in-bases"
mkdir -p "$work"
have() { $PODMAN image exists "$1"; }
# Limits no lower than the container runtime's defaults are refused without CAP_SYS_RESOURCE.
run=($PODMAN run --network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

if ! have docker.io/library/debian:bookworm-slim; then
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
  # As the official slim image: apt keeps no caches, dpkg installs no documentation or locales.
  cat >"$work/rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/info/*' \
    >"$work/rootfs/etc/dpkg/dpkg.cfg.d/docker"
  find "$work/rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/* "$work/rootfs"/usr/share/info/*
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/cache/apt/*.bin "$work/rootfs"/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | $PODMAN import --change 'CMD ["bash"]' - docker.io/library/debian:bookworm-slim
  rm -rf "$work/rootfs"
fi

if ! have docker.io/library/node:20-bookworm-slim; then
  command -v node >/dev/null && node --version | grep -q '^v20\.' || { echo "needs Node.js 20 here" >&2; exit 1; }
  # The node binary and the npm installed beside it (which may be newer than the package's).
  tar -C / -cf "$work/node.tar" usr/bin/node usr/lib/node_modules/npm etc/ssl/certs/ca-certificates.crt
  $PODMAN rm -f cw-stand-in-node >/dev/null 2>&1 || true
  "${run[@]}" --name cw-stand-in-node -v "$work:/w:ro" docker.io/library/debian:bookworm-slim \
    sh -c 'tar -C / -xf /w/node.tar && ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/bin/npm \
           && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/bin/npx && node --version && npm --version'
  $PODMAN commit --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["node"]' cw-stand-in-node docker.io/library/node:20-bookworm-slim >/dev/null
  $PODMAN rm cw-stand-in-node >/dev/null
fi

if ! have docker.io/library/rust:1-bookworm; then
  toolchain="$(rustc --print sysroot)"
  $PODMAN rm -f cw-stand-in-rust >/dev/null 2>&1 || true
  "${run[@]}" --name cw-stand-in-rust -v "$toolchain:/toolchain:ro" \
    -v /usr/local/share/ca-certificates:/extra-ca:ro docker.io/library/debian:bookworm-slim \
    sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
             gcc g++ libc6-dev make pkg-config git ca-certificates curl \
           && rm -rf /var/lib/apt/lists/* \
           && cp /extra-ca/*.crt /usr/local/share/ca-certificates/ 2>/dev/null; update-ca-certificates \
           && mkdir -p /usr/local/rustup/toolchains && cp -a /toolchain /usr/local/rustup/toolchains/stable \
           && mkdir -p /usr/local/cargo/bin \
           && for b in /usr/local/rustup/toolchains/stable/bin/*; do ln -s "$b" /usr/local/cargo/bin/; done \
           && /usr/local/cargo/bin/cargo --version'
  $PODMAN commit \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' cw-stand-in-rust docker.io/library/rust:1-bookworm >/dev/null
  $PODMAN rm cw-stand-in-rust >/dev/null
fi
$PODMAN images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'debian:bookworm-slim|node:20-bookworm-slim|rust:1-bookworm'
