#!/bin/bash
# A real single-node HTCondor pool for the test suite, addressed like an HTCondor-CE.
#
# Debian 12 ships no HTCondor; Debian sid's `minicondor` (the same 25.x as the PyPI bindings)
# needs a newer glibc, so it runs in a debootstrapped sid chroot on loopback. The collector and
# every daemon listen behind the shared port 127.0.0.1:9619, the port an HTCondor-CE uses, and
# the host-side `htcondor2` bindings reach it with an IDTOKEN for the non-root user `pilot`.
#
# It also accepts SciTokens/WLCG tokens (SCITOKENS), the way an HTCondor-CE does: a test CA of
# this checkout signs the pool's SSL host certificate (SCITOKENS runs inside TLS) and a
# `localhost` certificate for a token issuer (our server, started by a test on a free port); the
# CA is in the chroot's trust store, so the schedd fetches the issuer's JWKS over HTTPS; a
# token's `aud` must be the CE's `host:port`; and the map file sends any issuer at
# https://localhost:<port> to the job user (a token from any other issuer stays unmapped).
#
# Usage (as root):
#   tests/infra/htcondor-setup.sh [start]   build once (≈1 min), then start or refresh (seconds)
#   tests/infra/htcondor-setup.sh stop      stop condor_master and unmount
#   tests/infra/htcondor-setup.sh status    mounts, master pid, daemons in the collector
#   tests/infra/htcondor-setup.sh purge     stop, then delete everything under the directory
#
# Environment:
#   HTCONDOR_INFRA_DIR  where everything lives (default: /var/tmp/site-director-test-<hash>/
#                       htcondor, outside the checkout, which may lie under a 0700 directory;
#                       see lib.sh)
#   DEBIAN_MIRROR       apt mirror for debootstrap (default: http://deb.debian.org/debian)
#   PILOT_USER / PILOT_UID   the job owner the token names (default: pilot / 1000)
#   HTCONDOR_PORT       the shared port on 127.0.0.1 (default: the previous start's if free,
#                       else 9619, HTCondor-CE's, if free, else a free one). A port asked for
#                       and taken is an error naming the port and its holder.
#
# Result: <dir>/htcondor.env, shell KEY=VALUE lines the tests read (CONDOR_CONFIG,
# HTCONDOR_TOKEN_DIR, HTCONDOR_COLLECTOR, HTCONDOR_SCHEDD_NAME, HTCONDOR_ROOT,
# HTCONDOR_CA_FILE, HTCONDOR_CA_DIR, HTCONDOR_ISSUER_CERT, HTCONDOR_ISSUER_KEY,
# HTCONDOR_TOKEN_AUDIENCE, ...).
set -euo pipefail

say() { printf '[htcondor-setup %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# shellcheck source=tests/infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${HTCONDOR_INFRA_DIR:-$INFRA_BASE/htcondor}
PORTFILE=$DIR/port
ROOT=$DIR/root
CLIENT=$DIR/client
TOKENS=$CLIENT/tokens.d
LOGS=$DIR/logs
TLS=$DIR/tls
CADIR=$TLS/certificates
PIDFILE=$DIR/master.pid
ENVFILE=$DIR/htcondor.env
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# the pool's files for SciTokens, inside the chroot
POOL_CERT=/etc/condor/site-director-tests-hostcert.pem
POOL_KEY=/etc/condor/site-director-tests-hostkey.pem
MAPFILE=/etc/condor/site-director-tests.mapfile
TRUSTED_CA=/usr/local/share/ca-certificates/site-director-test-ca.crt
PILOT_USER=${PILOT_USER:-pilot}
PILOT_UID=${PILOT_UID:-1000}
PORT=${HTCONDOR_PORT:-}
# a clean environment inside the chroot: nothing of the caller's CONDOR_* leaks in
CHROOT_ENV=(/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

in_root() { chroot "$ROOT" "${CHROOT_ENV[@]}" "$@"; }
master_alive() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, mount)"; }

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return
  say "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The starter unshares a mount namespace per job and makes / rprivate: that fails with EINVAL
# (every job held, code 6/22) unless the chroot's root is itself a mount point.
mount_all() {
  mountpoint -q "$ROOT" || mount --bind "$ROOT" "$ROOT"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
}

unmount_all() {
  local m
  for m in "$ROOT/proc" "$ROOT"; do
    mountpoint -q "$m" 2>/dev/null || continue
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

build_root() {
  if [[ -x $ROOT/usr/sbin/condor_master ]]; then
    return
  fi
  ensure_debootstrap
  mkdir -p "$LOGS"
  if [[ ! -x $ROOT/usr/bin/apt-get ]]; then
    say "debootstrap sid into $ROOT (about 40 s)"
    rm -rf "$ROOT"
    debootstrap --variant=minbase sid "$ROOT" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 ||
      die "debootstrap failed, see $LOGS/debootstrap.log"
  fi
  say "installing minicondor in the chroot (about 25 s)"
  # no service starts from maintainer scripts; the mirror's Release may look expired to this clock
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99-no-valid-until"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  if ! { in_root apt-get update -qq &&
         in_root DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           minicondor python3 curl ca-certificates; } >"$LOGS/apt.log" 2>&1; then
    umount "$ROOT/proc" || true
    die "apt-get install minicondor failed, see $LOGS/apt.log"
  fi
  in_root apt-get clean
  rm -rf "$ROOT"/var/lib/apt/lists/*
  umount "$ROOT/proc"
  say "minicondor $(in_root dpkg-query -W -f='${Version}' minicondor) installed"
}

# A certificate signed by the test CA: $1 the file stem under $TLS, $2 its subjectAltName.
issue_cert() {
  local stem=$TLS/$1
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$stem-key.pem" -out "$stem.csr" 2>/dev/null
  openssl x509 -req -in "$stem.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" \
    -CAcreateserial -days 825 -sha256 -out "$stem.pem" -extfile <(
      printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$2"
      printf 'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n'
    ) 2>/dev/null
  rm -f "$stem.csr"
  chmod 600 "$stem-key.pem"
}

# The test CA (once per checkout), the pool's host certificate and the token issuer's. The CA
# goes into the chroot's trust store (the schedd fetches an issuer's JWKS trusting it) and into
# a hashed directory for the host-side client (AUTH_SSL_CLIENT_CADIR).
make_tls() {
  if ! command -v openssl >/dev/null; then
    say "installing openssl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  fi
  mkdir -p "$TLS" "$CADIR"
  if [[ ! -s $TLS/ca.pem || ! -s $TLS/ca-key.pem ]]; then
    say "creating the pool's test CA"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -subj "/CN=site-director test CA $INFRA_HASH" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" 2>/dev/null
    rm -f "$TLS/pool.pem" "$TLS/issuer.pem"
  fi
  chmod 600 "$TLS/ca-key.pem"
  [[ -s $TLS/pool.pem ]] || issue_cert pool "DNS:localhost,DNS:$(hostname),IP:127.0.0.1"
  [[ -s $TLS/issuer.pem ]] || issue_cert issuer "DNS:localhost,IP:127.0.0.1"
  cp "$TLS/ca.pem" "$CADIR/site-director-test-ca.pem"
  ln -sfn site-director-test-ca.pem "$CADIR/$(openssl x509 -in "$TLS/ca.pem" -noout -hash).0"
  chmod 755 "$TLS" "$CADIR" # the CA and the certificates are public; the keys stay 0600
  chmod 644 "$TLS/ca.pem" "$TLS/pool.pem" "$TLS/issuer.pem" "$CADIR/site-director-test-ca.pem"
  install -m 644 "$TLS/pool.pem" "$ROOT$POOL_CERT"
  install -m 600 "$TLS/pool-key.pem" "$ROOT$POOL_KEY"
  if ! cmp -s "$TLS/ca.pem" "$ROOT$TRUSTED_CA"; then
    install -D -m 644 "$TLS/ca.pem" "$ROOT$TRUSTED_CA"
    in_root update-ca-certificates >"$LOGS/update-ca-certificates.log" 2>&1 ||
      die "update-ca-certificates failed in the chroot, see $LOGS/update-ca-certificates.log"
    say "test CA added to the chroot's trust store"
  fi
}

write_pool_config() {
  cp /etc/hosts "$ROOT/etc/hosts"   # the host name must resolve the same inside and out
  grep -q "^$PILOT_USER:" "$ROOT/etc/passwd" ||
    in_root useradd --create-home --uid "$PILOT_UID" --shell /bin/sh "$PILOT_USER"
  cat >"$ROOT/etc/condor/config.d/99-site-director-tests.conf" <<EOF
# Written by tests/infra/htcondor-setup.sh: a loopback-only pool addressed like an HTCondor-CE.
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:$PORT
SHARED_PORT_PORT = $PORT
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = false
ENABLE_IPV6 = false
# more slots than the 2 cores, so a batch of small test jobs runs at once
NUM_CPUS = 8
# short cycles: a test job runs within seconds of its submission
SCHEDD_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 2
NEGOTIATOR_MIN_INTERVAL = 1
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
PERIODIC_EXPR_INTERVAL = 2
# a private /tmp per job is fine, but keep /tmp itself visible to the jobs
MOUNT_UNDER_SCRATCH = /var/tmp
# SciTokens/WLCG tokens, as on an HTCondor-CE: TLS with a certificate of the test CA, the CE's
# host:port as the audience, and the issuers' tokens mapped to the job user (the map file)
AUTH_SSL_SERVER_CERTFILE = $POOL_CERT
AUTH_SSL_SERVER_KEYFILE = $POOL_KEY
# one audience only: with 25.14 only the last of a list of short ones (as '127.0.0.1:9619')
# matched (its code keeps pointers into a vector of strings it is still growing)
SCITOKENS_SERVER_AUDIENCE = 127.0.0.1:$PORT
CERTIFICATE_MAPFILE = $MAPFILE
# keys in /slashes/ are regular expressions, others literal (as HTCondor-CE has it)
CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS = true
EOF
  # "<issuer>,<sub>" -> user: our test issuers only (https://localhost:<any port>, any sub)
  cat >"$ROOT$MAPFILE" <<EOF
# Written by tests/infra/htcondor-setup.sh
SCITOKENS /^https:\/\/localhost:[0-9]+,/ $PILOT_USER
EOF
}

# The shared port: asked for (must be free unless our running master holds it), else the
# previous start's, else chosen free. A running master on another port is restarted.
choose_port() {
  local saved=""
  [[ -s $PORTFILE ]] && saved=$(cat "$PORTFILE")
  if master_alive; then
    if [[ -z $PORT || $PORT == "$saved" ]]; then
      PORT=$saved
      return
    fi
    require_free_port "$PORT" HTCONDOR_PORT # before stopping the pool that works
    say "port changes from $saved to $PORT: restarting the pool"
    do_stop
  fi
  if [[ -n $PORT ]]; then
    require_free_port "$PORT" HTCONDOR_PORT
  else
    pick_port "$saved" 9619
    PORT=$REPLY
  fi
  echo "$PORT" >"$PORTFILE"
}

start_master() {
  mount_all
  if master_alive; then
    say "condor_master already running (pid $(cat "$PIDFILE")): reconfig"
    in_root condor_reconfig >/dev/null 2>&1 || true
  else
    mkdir -p "$LOGS"
    setsid chroot "$ROOT" "${CHROOT_ENV[@]}" /usr/sbin/condor_master -f \
      >"$LOGS/master.out" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    say "started condor_master (pid $(cat "$PIDFILE"))"
  fi
  # ready = the pool signing key exists and the schedd is advertised in the collector
  local _
  for _ in $(seq 240); do
    if [[ -s $ROOT/etc/condor/passwords.d/POOL ]] &&
       [[ -n $(in_root condor_status -schedd -af Name 2>/dev/null) ]]; then
      return
    fi
    master_alive || die "condor_master exited, see $LOGS/master.out and $ROOT/var/log/condor/"
    sleep 0.25
  done
  grep -qs "Address already in use" "$ROOT"/var/log/condor/SharedPortLog &&
    die "the pool could not listen on 127.0.0.1:$PORT: in use by $(port_holder "$PORT")"
  die "schedd not advertised after 60 s, see $ROOT/var/log/condor/"
}

write_client_side() {
  mkdir -p "$TOKENS"
  chmod 700 "$CLIENT" "$TOKENS"
  local uid_domain schedd token
  uid_domain=$(in_root condor_config_val UID_DOMAIN)
  schedd=$(in_root condor_status -schedd -af Name | head -n1)
  token=$TOKENS/$PILOT_USER.token
  # a fresh token each start: it must be signed by the pool key of the root as it is now
  in_root condor_token_create -identity "$PILOT_USER@$uid_domain" >"$token.new"
  mv "$token.new" "$token"
  # a token readable by others is silently ignored by the client (AUTHENTICATE:1004)
  chmod 600 "$token"
  cat >"$CLIENT/condor_config" <<EOF
# host-side client configuration for the test pool (written by tests/infra/htcondor-setup.sh)
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:$PORT
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = false
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
SEC_TOKEN_DIRECTORY = $TOKENS
EOF
  cat >"$ENVFILE.new" <<EOF
CONDOR_CONFIG=$CLIENT/condor_config
HTCONDOR_TOKEN_DIR=$TOKENS
HTCONDOR_COLLECTOR=127.0.0.1:$PORT
HTCONDOR_HOST=127.0.0.1
HTCONDOR_PORT=$PORT
HTCONDOR_SCHEDD_NAME=$schedd
HTCONDOR_ROOT=$ROOT
HTCONDOR_JOB_USER=$PILOT_USER
HTCONDOR_VERSION=$(in_root dpkg-query -W -f='${Version}' minicondor)
HTCONDOR_CA_FILE=$TLS/ca.pem
HTCONDOR_CA_DIR=$CADIR
HTCONDOR_ISSUER_CERT=$TLS/issuer.pem
HTCONDOR_ISSUER_KEY=$TLS/issuer-key.pem
HTCONDOR_TOKEN_AUDIENCE=127.0.0.1:$PORT
EOF
  mv "$ENVFILE.new" "$ENVFILE"
  say "ready: schedd $schedd via 127.0.0.1:$PORT, token for $PILOT_USER@$uid_domain, env in $ENVFILE"
}

do_start() {
  need_root
  make_work_dir "$DIR"
  mkdir -p "$LOGS"
  choose_port # first: a port asked for and taken leaves a working pool as it is
  # a stale env file must never point a test at a pool that is not up
  rm -f "$ENVFILE"
  build_root
  make_tls
  write_pool_config
  start_master
  write_client_side
}

do_stop() {
  need_root
  rm -f "$ENVFILE"
  if master_alive; then
    local pid _
    pid=$(cat "$PIDFILE")
    say "stopping condor_master (pid $pid)"
    in_root condor_off -master >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      say "condor_master still alive after 20 s: SIGQUIT"
      kill -QUIT "$pid" 2>/dev/null || true
      sleep 2
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE"
  unmount_all
  say "stopped"
}

do_status() {
  grep " $ROOT" /proc/mounts || echo "nothing mounted under $ROOT"
  if master_alive; then
    echo "condor_master pid $(cat "$PIDFILE")"
    in_root condor_status -any -af MyType Name || true
  else
    echo "condor_master not running"
  fi
}

do_purge() {
  do_stop
  grep -q " $ROOT" /proc/mounts && die "still mounted under $ROOT, not deleting"
  rm -rf "$DIR"
  rmdir "$INFRA_BASE" 2>/dev/null || true # when the other service is gone too
  say "purged $DIR"
}

case ${1:-start} in
  start | up) do_start ;;
  stop | down) do_stop ;;
  status) do_status ;;
  purge) do_purge ;;
  *) echo "usage: $0 [start|stop|status|purge]" >&2; exit 2 ;;
esac
