#!/bin/bash
# A throw-away ARC CE (A-REX from Debian, fork LRMS, REST interface) on 127.0.0.1 for the tests.
#
# One `arched` process runs both the job manager and the HTTPS interface (the stock start scripts
# use two, and then the REST job state lags by up to a minute). Jobs run with the fork back-end
# as nobody:nogroup. A-REX accepts the test user certificate and bearer tokens from one issuer:
# our own server, started later by the tests at $ARC_ISSUER with a TLS certificate this script
# issues from the same test CA (A-REX fetches the issuer's JWKS trusting only
# /etc/grid-security/certificates, so the test CA is installed there).
#
# Usage (as root):
#   tests/infra/arc-ce-setup.sh [start]   install packages if missing, (re)start A-REX (≈3 s)
#   tests/infra/arc-ce-setup.sh stop      stop A-REX and remove the env file
#   tests/infra/arc-ce-setup.sh status    is it up?
#   tests/infra/arc-ce-setup.sh purge     stop, delete the work directory, take the CA out of
#                                         /etc/grid-security/certificates
#
# Environment:
#   ARC_INFRA_DIR  work directory (default: /var/tmp/site-director-test-<hash>/arc, outside the
#                  checkout: the jobs' user, nobody, must reach its session directory; see lib.sh)
#   ARC_PORT       A-REX HTTPS port on 127.0.0.1 (default: the previous start's if free, else
#                  8443 if free, else a free one). A port asked for and taken is an error
#                  naming the port and its holder.
#   ARC_ISSUER     the token issuer A-REX trusts (default: https://localhost:<port>, the port
#                  chosen at the first start as ARC_PORT's and kept until `purge`: 8444 if free)
#   ARC_SPARE_ISSUERS  more trusted issuers, space-separated (default: three more, chosen the
#                  same way, 8445-8447 if free), so that test sessions side by side each get one
#   ARC_CA_ID      test CA id (default: sitedirector-<hash>, one per checkout, since all of them
#                  go to /etc/grid-security/certificates; never the package's own default id)
#
# The ports in use are in <dir>/ports.env and <dir>/arc.env.
#
# Result: <dir>/arc.env, KEY=VALUE lines the tests read (ARC_URL, ARC_CA_FILE, ARC_USER_CERT,
# ARC_USER_KEY, ARC_ISSUER, ARC_ISSUER_PORT, ARC_SERVER_CERT, ARC_SERVER_KEY, ...).
set -euo pipefail

say() { printf '[arc-ce-setup %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# shellcheck source=tests/infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${ARC_INFRA_DIR:-$INFRA_BASE/arc}
PORT=${ARC_PORT:-}
ISSUER=${ARC_ISSUER:-}
SPARE_ISSUERS=${ARC_SPARE_ISSUERS-unset}
CAID=${ARC_CA_ID:-sitedirector-$INFRA_HASH}
PORTSFILE=$DIR/ports.env
PKI=$DIR/pki
CADIR=$DIR/certificates
ENVFILE=$DIR/arc.env
PIDFILE=$DIR/run/arched.pid
GRID_CERTS=/etc/grid-security/certificates
PACKAGES=(nordugrid-arc-arex nordugrid-arc-plugins-arcrest nordugrid-arc-arcctl
  nordugrid-arc-arcctl-service)

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (packages, /etc/grid-security)"; }
arched_alive() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

stop_arex() {
  rm -f "$ENVFILE" # a stale env file must never point a test at a CE that is down
  if arched_alive; then
    local pid
    pid=$(cat "$PIDFILE")
    say "stopping arched (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

# The ports: asked for (must be free), else kept from the previous start, else chosen free.
# The issuers are kept as they are even when a test session holds their port right now: it is
# that session's issuer, which A-REX must go on trusting.
choose_ports() {
  local saved_port="" saved_issuer="" saved_spares=""
  if [[ -s $PORTSFILE ]]; then
    saved_port=$(sed -n 's/^ARC_PORT=//p' "$PORTSFILE")
    saved_issuer=$(sed -n 's/^ARC_ISSUER=//p' "$PORTSFILE")
    saved_spares=$(sed -n 's/^ARC_SPARE_ISSUERS=//p' "$PORTSFILE" | tr -d '"')
  fi
  if [[ -n $PORT ]]; then
    require_free_port "$PORT" ARC_PORT
    PICKED+="$PORT "
  else
    pick_port "$saved_port" 8443
    PORT=$REPLY
  fi
  local i
  for i in $saved_issuer $saved_spares; do PICKED+="${i##*:} "; done
  if [[ -z $ISSUER ]]; then
    ISSUER=$saved_issuer
    [[ -n $ISSUER ]] || { pick_port 8444; ISSUER=https://localhost:$REPLY; }
  fi
  if [[ $SPARE_ISSUERS == unset ]]; then
    SPARE_ISSUERS=$saved_spares
    if [[ -z $SPARE_ISSUERS ]]; then
      for i in 8445 8446 8447; do
        pick_port "$i"
        SPARE_ISSUERS+="${SPARE_ISSUERS:+ }https://localhost:$REPLY"
      done
    fi
  fi
  printf 'ARC_PORT=%s\nARC_ISSUER=%s\nARC_SPARE_ISSUERS="%s"\n' "$PORT" "$ISSUER" "$SPARE_ISSUERS" \
    >"$PORTSFILE"
}

# Test CA, host certificate for A-REX, user certificate for X.509 submission, and a `localhost`
# server certificate for our token issuer. Made once; later starts reuse them.
make_pki() {
  mkdir -p "$PKI" "$CADIR"
  local ca=$CADIR/ARC-TestCA-$CAID.pem cakey=$CADIR/ARC-TestCA-$CAID-key.pem
  if [[ ! -s $ca ]]; then
    say "creating test CA $CAID"
    arcctl -c /dev/null test-ca --ca-id "$CAID" --ca-dir "$CADIR" init -f >/dev/null
  fi
  if [[ ! -s $DIR/hostcert.pem ]]; then
    (cd "$PKI" && arcctl -c /dev/null test-ca --ca-id "$CAID" --ca-dir "$CADIR" \
      hostcert -n localhost -t -f >/dev/null && tar xzf hostcert-localhost.tar.gz)
    cp "$PKI/hostcert.pem" "$PKI/hostkey.pem" "$DIR/"
  fi
  if [[ ! -s $DIR/usercert.pem ]]; then
    (cd "$PKI" && arcctl -c /dev/null test-ca --ca-id "$CAID" --ca-dir "$CADIR" \
      usercert -n pilot -t -f --no-auth >/dev/null && tar xzf usercert-pilot.tar.gz)
    cp "$PKI"/arc-testca-usercert/usercert.pem "$PKI"/arc-testca-usercert/userkey.pem "$DIR/"
  fi
  if [[ ! -s $DIR/server-cert.pem ]]; then
    say "issuing the token issuer's TLS certificate (localhost, 127.0.0.1)"
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$DIR/server-key.pem" -out "$PKI/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$PKI/server.ext"
    openssl x509 -req -in "$PKI/server.csr" -CA "$ca" -CAkey "$cakey" -CAcreateserial \
      -days 30 -sha256 -extfile "$PKI/server.ext" -out "$DIR/server-cert.pem" 2>/dev/null
  fi
  chmod 600 "$DIR/hostkey.pem" "$DIR/userkey.pem" "$DIR/server-key.pem"
  cp "$ca" "$DIR/ca.pem"
  chmod 644 "$DIR/ca.pem"

  # A-REX's JWKS fetcher trusts only this directory, whatever x509_cert_dir says.
  mkdir -p "$GRID_CERTS"
  cp "$ca" "$CADIR/ARC-TestCA-$CAID.signing_policy" "$GRID_CERTS/"
  local h
  for h in $(openssl x509 -in "$ca" -noout -subject_hash -subject_hash_old); do
    ln -sf "ARC-TestCA-$CAID.pem" "$GRID_CERTS/$h.0"
    ln -sf "ARC-TestCA-$CAID.signing_policy" "$GRID_CERTS/$h.signing_policy"
  done
  # DH parameters made now in a second, or arched makes 4096-bit ones for minutes.
  [[ -s $DIR/control/dhparam.pem ]] ||
    openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$DIR/control/dhparam.pem" 2>/dev/null
}

write_arc_conf() {
  local subject
  subject=$(openssl x509 -in "$DIR/usercert.pem" -noout -subject -nameopt compat | sed 's/^subject=//')
  cat >"$DIR/arc.conf" <<EOF
[common]
hostname = localhost
x509_host_key = $DIR/hostkey.pem
x509_host_cert = $DIR/hostcert.pem
x509_cert_dir = $CADIR

[authgroup:certusers]
subject = $subject

[authgroup:tokenusers]
$(for i in $ISSUER $SPARE_ISSUERS; do echo "authtokens = * $i * * *"; done)

[mapping]
map_to_user = certusers nobody:nogroup
map_to_user = tokenusers nobody:nogroup

[authtokens]

[lrms]
lrms = fork

[arex]
loglevel = 3
logfile = $DIR/log/arex.log
pidfile = $DIR/run/arex.pid
controldir = $DIR/control
sessiondir = $DIR/session
tmpdir = $DIR/tmp
wakeupperiod = 5

[arex/ws]
wsurl = https://localhost:$PORT/arex
logfile = $DIR/log/ws-interface.log

[arex/ws/jobs]
allowaccess = certusers
allowaccess = tokenusers

[infosys]
logfile = $DIR/log/infoprovider.log

[infosys/glue2]

[infosys/cluster]

[queue:fork]
EOF
  /usr/lib/arc/arc-config-check --config "$DIR/arc.conf" --skip-warnings >"$DIR/log/config-check.log" 2>&1 ||
    die "arc.conf refused: $(cat "$DIR/log/config-check.log")"
  /usr/lib/arc/arcconfig-parser --config "$DIR/arc.conf" --runconfig "$DIR/run/arex.cfg" --save
}

# The service chain arc-arex-ws would build, plus the job manager, in one process. The
# infoprovider wakes every 5 s (unit 0.1 s) so that REST job states follow the jobs closely.
write_arched_xml() {
  cat >"$DIR/arex.xml" <<EOF
<?xml version="1.0"?>
<ArcConfig xmlns="http://www.nordugrid.org/schemas/ArcConfig/2007"
           xmlns:tcp="http://www.nordugrid.org/schemas/ArcMCCTCP/2007"
           xmlns:arex="http://www.nordugrid.org/schemas/a-rex/Config">
  <Server>
    <PidFile>$PIDFILE</PidFile>
    <Logger><File>$DIR/log/arched.log</File><Level>INFO</Level></Logger>
    <Watchdog>false</Watchdog>
  </Server>
  <ModuleManager><Path>/usr/lib/arc/</Path></ModuleManager>
  <Plugins><Name>mcctcp</Name></Plugins>
  <Plugins><Name>mcctls</Name></Plugins>
  <Plugins><Name>mcchttp</Name></Plugins>
  <Plugins><Name>mccsoap</Name></Plugins>
  <Plugins><Name>arex</Name></Plugins>
  <Plugins><Name>identitymap</Name></Plugins>
  <Plugins><Name>arcshc</Name></Plugins>
  <Plugins><Name>arcshclegacy</Name></Plugins>
  <Plugins><Name>arcshcotokens</Name></Plugins>
  <Chain>
    <Component name="tcp.service" id="tcp">
      <next id="tls"/>
      <tcp:Listen><tcp:Interface>127.0.0.1</tcp:Interface><tcp:Port>$PORT</tcp:Port></tcp:Listen>
    </Component>
    <Component name="tls.service" id="tls">
      <next id="http"/>
      <KeyPath>$DIR/hostkey.pem</KeyPath>
      <CertificatePath>$DIR/hostcert.pem</CertificatePath>
      <CACertificatesDir PolicyGlobus="true">$CADIR</CACertificatesDir>
      <VOMSProcessing>standard</VOMSProcessing>
      <ClientAuthn>false</ClientAuthn>
      <Ciphers>HIGH:!eNULL:!aNULL</Ciphers>
      <Protocol>TLSv1.2 TLSv1.3</Protocol>
      <DHParamFile>$DIR/control/dhparam.pem</DHParamFile>
    </Component>
    <Component name="http.service" id="http">
      <next id="soap">POST</next>
      <next id="plexer"/>
      <SecHandler name="otokens.handler" event="incoming"/>
      <SecHandler name="arclegacy.handler" event="incoming">
        <ConfigFile>$DIR/run/arex.cfg</ConfigFile>
      </SecHandler>
    </Component>
    <Component name="soap.service" id="soap">
      <next id="plexer"/>
      <ContinueNonSOAP>true</ContinueNonSOAP>
    </Component>
    <Plexer name="plexer.service" id="plexer"><next id="a-rex">^/arex</next></Plexer>
    <Service name="a-rex" id="a-rex">
      <SecHandler name="arclegacy.map" event="incoming">
        <ConfigBlock><ConfigFile>$DIR/run/arex.cfg</ConfigFile><BlockName>mapping</BlockName></ConfigBlock>
      </SecHandler>
      <arex:endpoint>https://localhost:$PORT/arex</arex:endpoint>
      <arex:gmconfig>$DIR/run/arex.cfg</arex:gmconfig>
      <arex:InfoproviderWakeupPeriod>50</arex:InfoproviderWakeupPeriod>
    </Service>
  </Chain>
</ArcConfig>
EOF
}

start_arex() {
  need_root
  ensure_packages
  # a port asked for and taken (but not by our own A-REX) leaves a working A-REX as it is
  if [[ -n $PORT ]] && ! port_free "$PORT" &&
    ! { arched_alive && grep -qx "ARC_PORT=$PORT" "$PORTSFILE" 2>/dev/null; }; then
    require_free_port "$PORT" ARC_PORT
  fi
  stop_arex
  make_work_dir "$DIR"
  mkdir -p "$DIR"/{control,session,log,run,tmp}
  chmod 755 "$DIR/session"
  chmod 1777 "$DIR/tmp"
  choose_ports
  make_pki
  write_arc_conf
  write_arched_xml
  say "starting arched on 127.0.0.1:$PORT (issuers $ISSUER $SPARE_ISSUERS)"
  [[ -f $DIR/log/arched.log ]] && mv "$DIR/log/arched.log" "$DIR/log/arched.log.1"
  (cd "$DIR/run" && X509_USER_CERT=$DIR/hostcert.pem X509_USER_KEY=$DIR/hostkey.pem \
    X509_CERT_DIR=$CADIR HOSTNAME=localhost TMPDIR=$DIR/tmp \
    setsid bash -c 'echo $$ >"$1"; exec /usr/sbin/arched -f -c "$2"' arched "$PIDFILE" "$DIR/arex.xml" \
    >"$DIR/log/arched.stderr" 2>&1 </dev/null &) >/dev/null 2>&1 </dev/null
  local url=https://localhost:$PORT/arex
  for _ in $(seq 1 150); do
    if [[ -s $PIDFILE ]] && ! arched_alive; then # it died (port taken, bad config)
      grep -qi "bind\|address already in use" "$DIR/log/arched.log" 2>/dev/null &&
        die "A-REX could not listen on 127.0.0.1:$PORT: in use by $(port_holder "$PORT") (see $DIR/log/arched.log)"
      break
    fi
    if curl -sf -o /dev/null --cacert "$DIR/ca.pem" \
      --cert "$DIR/usercert.pem" --key "$DIR/userkey.pem" "$url/rest/1.0/info"; then
      write_env "$url"
      say "ready: $url, env in $ENVFILE"
      return
    fi
    sleep 0.1
  done
  tail -20 "$DIR/log/arched.log" >&2 || true
  port_free "$PORT" || arched_alive ||
    die "A-REX did not answer on $url within 15 s; port $PORT is in use by $(port_holder "$PORT")"
  die "A-REX did not answer on $url within 15 s"
}

write_env() {
  local issuer_port=${ISSUER##*:}
  issuer_port=${issuer_port%%/*}
  cat >"$ENVFILE.new" <<EOF
ARC_URL=$1
ARC_REST_URL=$1/rest/1.0
ARC_PORT=$PORT
ARC_QUEUE=fork
ARC_CA_FILE=$DIR/ca.pem
ARC_CA_DIR=$CADIR
ARC_USER_CERT=$DIR/usercert.pem
ARC_USER_KEY=$DIR/userkey.pem
ARC_ISSUER=$ISSUER
ARC_SPARE_ISSUERS="$SPARE_ISSUERS"
ARC_ISSUER_PORT=$issuer_port
ARC_SERVER_CERT=$DIR/server-cert.pem
ARC_SERVER_KEY=$DIR/server-key.pem
ARC_SESSION_DIR=$DIR/session
ARC_LOG=$DIR/log/arex.log
EOF
  mv "$ENVFILE.new" "$ENVFILE"
}

# Take this checkout's test CA out of /etc/grid-security/certificates again.
forget_ca() {
  local ca=$GRID_CERTS/ARC-TestCA-$CAID.pem h
  if [[ -f $ca ]]; then
    for h in $(openssl x509 -in "$ca" -noout -subject_hash -subject_hash_old); do
      [[ $(readlink "$GRID_CERTS/$h.0") == "ARC-TestCA-$CAID.pem" ]] &&
        rm -f "$GRID_CERTS/$h.0" "$GRID_CERTS/$h.signing_policy"
    done
  fi
  rm -f "$ca" "$GRID_CERTS/ARC-TestCA-$CAID.signing_policy"
}

status() {
  if arched_alive; then
    say "arched up (pid $(cat "$PIDFILE")), env in $ENVFILE"
  else
    say "arched not running"
    return 1
  fi
}

case ${1:-start} in
  start) start_arex ;;
  stop) stop_arex ;;
  status) status ;;
  purge) stop_arex && forget_ca && rm -rf "$DIR" && { rmdir "$INFRA_BASE" 2>/dev/null || true; } ;;
  *) die "usage: $0 [start|stop|status|purge]" ;;
esac
