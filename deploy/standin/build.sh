#!/usr/bin/env bash
# Stand-in base images for a machine that cannot pull the real ones (no Docker Hub access):
#
#   python:3.11-slim-bookworm   what the Dockerfile builds FROM
#   redis:7.2-alpine            what docker-compose.yml runs as `redis`
#
# Both are one Debian bookworm rootfs (debootstrap --variant=minbase from Debian's mirror, the
# only registry such a machine may reach), imported with `docker import` under the exact names
# the two files use, so that `docker compose build` and `docker compose up` run the real
# Dockerfile and compose file unchanged. They are NOT the real images: Python is Debian's 3.11
# (/usr/bin, pip installs to /usr/local), Redis is Debian's 7.0 (the real image has 7.2). Where
# the Dockerfile and the compose file rely on the real images they behave the same:
#
#   python image  `python`, `pip`, `python3` on PATH; pip installs system-wide as root (no
#                 PEP 668 marker, like the real image); groupadd/useradd; CMD python3;
#                 the host's CA bundle, so pip inside `docker build` reaches PyPI through a
#                 TLS-inspecting egress proxy.
#   redis image   ENTRYPOINT docker-entrypoint.sh, CMD redis-server, WORKDIR /data owned by
#                 `redis`: like the official entrypoint it runs redis-server as user redis and
#                 turns protected mode off (the official build compiles it off; without that,
#                 Debian's redis-server refuses clients from other containers); redis-cli for
#                 the healthcheck.
#
# DO NOT use this where the real images can be pulled: the tags shadow them (`docker rmi` the
# two tags, or `docker compose build --pull`, to go back). docs/deploy.md, "Trying the stack
# where the base images cannot be pulled".
#
# Idempotent and cached: nothing is done when both tags exist with this recipe's label
# (chainrule.standin.recipe: a hash of this file and of the host's CA bundle) or are real images
# (no such label: never replaced, not even with --force); the rootfs is
# kept under $CHAINRULE_STANDIN_CACHE (default /var/cache/chainrule-standin), so a rebuild
# after `docker rmi` only re-imports. The first build (debootstrap) takes a few minutes.
#
# Usage: deploy/standin/build.sh [--force]     (root, a running Docker engine, debootstrap)
# Env:   CHAINRULE_STANDIN_MIRROR (default http://deb.debian.org/debian)
#        CHAINRULE_STANDIN_CA     (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail

PYTHON_TAG="python:3.11-slim-bookworm"
REDIS_TAG="redis:7.2-alpine"
SUITE="bookworm"
MIRROR="${CHAINRULE_STANDIN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${CHAINRULE_STANDIN_CACHE:-/var/cache/chainrule-standin}"
CA_BUNDLE="${CHAINRULE_STANDIN_CA:-/etc/ssl/certs/ca-certificates.crt}"
# python-is-python3: `python` on PATH. redis-tools: redis-cli, for the compose healthcheck.
PACKAGES="python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
SERVICE_PACKAGES="redis-server redis-tools"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "standin: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
[ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE (CHAINRULE_STANDIN_CA)"

SELF="$(readlink -f "$0")"
RECIPE="$(cat "$SELF" "$CA_BUNDLE" | sha256sum | cut -c1-16)"
LABEL="chainrule.standin.recipe"

label_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

# A tag is left alone when it is this recipe's stand-in, or a real image (no label: pulled or
# loaded by an operator; never replaced, even with --force).
NEEDED=()
for tag in "$PYTHON_TAG" "$REDIS_TAG"; do
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    NEEDED+=("$tag")
  elif [ -z "$(label_of "$tag")" ]; then
    log "$tag is a real image (no $LABEL label): kept"
  elif [ "$FORCE" -eq 1 ] || [ "$(label_of "$tag")" != "$RECIPE" ]; then
    NEEDED+=("$tag")
  fi
done
if [ "${#NEEDED[@]}" -eq 0 ]; then
  log "$PYTHON_TAG and $REDIS_TAG are there (stand-ins of recipe $RECIPE, or real): nothing to do"
  exit 0
fi
needed() { local t; for t in "${NEEDED[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"

# -- the rootfs, cached by what goes into it (not by the CA bundle: that is added at import) --
ROOTFS_KEY="$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" "$SERVICE_PACKAGES" "rootfs-v1" | sha256sum | cut -c1-16)"
ROOTFS="$CACHE/rootfs-$SUITE-$ROOTFS_KEY"
mkdir -p "$CACHE"
if [ ! -f "$ROOTFS/.chainrule-standin-complete" ]; then
  work="$CACHE/.work-$$"
  rm -rf "$work"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap $SUITE (minbase + $PACKAGES) into $work: a few minutes"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  # Services must not start inside the chroot: a redis-server started there would try the
  # host's port 6379.
  printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
  chmod 755 "$work/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$work/etc/resolv.conf"
  log "installing $SERVICE_PACKAGES in the rootfs"
  chroot "$work" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $SERVICE_PACKAGES >>"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "apt-get install in the rootfs failed"; }
  chroot "$work" apt-get clean
  rm -f "$work/usr/sbin/policy-rc.d"
  rm -rf "$work"/var/lib/apt/lists/* "$work"/var/cache/apt/*.bin "$work"/var/log/*.log
  : >"$work/etc/resolv.conf"  # Docker mounts its own
  # The real python image installs with pip as root, system-wide: no PEP 668 marker.
  rm -f "$work"/usr/lib/python3*/EXTERNALLY-MANAGED
  # The redis image's entrypoint, like the official one: redis-server runs as `redis`, with
  # protected mode off (the official image compiles it off); a config file stays first.
  cat >"$work/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# chainrule stand-in for the official redis image's entrypoint (deploy/standin/build.sh).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
  shift
  if [ -n "${1:-}" ] && [ "${1#-}" = "$1" ]; then
    conf="$1"; shift
    set -- redis-server "$conf" --protected-mode no "$@"
  else
    set -- redis-server --protected-mode no "$@"
  fi
  if [ "$(id -u)" = "0" ]; then
    find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
EOF
  chmod 755 "$work/usr/local/bin/docker-entrypoint.sh"
  mkdir -p "$work/data"
  chroot "$work" chown redis:redis /data
  touch "$work/.chainrule-standin-complete"
  rm -rf "$ROOTFS"
  mv "$work" "$ROOTFS"
  trap - EXIT
  log "rootfs cached at $ROOTFS"
else
  log "using the cached rootfs $ROOTFS"
fi

# -- import: the rootfs plus the host's CA bundle, under both names --------------------------
import_as() {  # import_as TAG --change ...
  local tag="$1"; shift
  local previous
  previous="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  log "importing $tag"
  tar --numeric-owner -C "$ROOTFS" --exclude=./.chainrule-standin-complete -cf - . \
    | docker import \
        --change "LABEL $LABEL=$RECIPE" \
        --change "LABEL org.opencontainers.image.description=\"chainrule stand-in for $tag (Debian $SUITE): deploy/standin/build.sh\"" \
        "$@" - "$tag" >/dev/null
  # the stand-in it replaces (a real image is never replaced), unless a container still uses it
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
}
# The host's bundle replaces Debian's (a superset: it has the egress proxy's CA), and the host's
# own CAs go where update-ca-certificates finds them, should a derived image run it.
install -m 644 "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then
  cp -f /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
fi

PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if needed "$PYTHON_TAG"; then
  import_as "$PYTHON_TAG" \
    --change "ENV $PATH_ENV" --change "ENV LANG=C.UTF-8" --change 'CMD ["python3"]'
fi
if needed "$REDIS_TAG"; then
  import_as "$REDIS_TAG" \
    --change "ENV $PATH_ENV" --change "WORKDIR /data" --change "VOLUME /data" --change "EXPOSE 6379" \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["redis-server"]'
fi
log "done: ${NEEDED[*]} (recipe $RECIPE)"
