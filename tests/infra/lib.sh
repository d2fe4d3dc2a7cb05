# Shared by tests/infra/*-setup.sh (sourced, not run): where a checkout's test services live,
# and the free ports they take.
#
# The services' files live outside the checkout, in /var/tmp/site-director-test-<hash>/ (<hash>:
# the first 12 hex digits of the SHA-256 of the checkout's physical path): the jobs run as
# other users (A-REX's nobody, the pool's pilot) who must reach their session directories,
# and a checkout may lie under a directory of mode 0700 (as `mktemp -d` makes). The fixtures
# (tests/director/ce/env_file.py, infra_dir) compute the same path.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
INFRA_HASH=$(printf %s "$REPO" | sha256sum | cut -c1-12)
INFRA_BASE=/var/tmp/site-director-test-$INFRA_HASH
umask 022 # directories the job users must traverse, whatever umask the caller has

# Create a work directory, safely in a world-writable place: a real directory of ours, mode 0755
# (and the same for $INFRA_BASE when it lies there).
make_work_dir() {
  local d dirs=("$1")
  [[ $(dirname "$1") == "$INFRA_BASE" ]] && dirs=("$INFRA_BASE" "$1")
  for d in "${dirs[@]}"; do
    mkdir -p "$d"
    [[ -d $d && ! -L $d && $(stat -c %u "$d") == "$(id -u)" ]] ||
      die "$d is not a directory of ours (a symlink, or owned by someone else): remove it"
    chmod 755 "$d"
  done
}

# Is TCP port $1 on 127.0.0.1 free to bind (as the services bind it, with SO_REUSEADDR)?
port_free() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
EOF
}

# Who listens on TCP port $1, for an error message.
port_holder() {
  local who=""
  command -v ss >/dev/null && who=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1)
  printf '%s\n' "${who:-another program}"
}

# A free port in $REPLY: the first free one of the arguments (a previous start's, the
# conventional one), else a random free one in 20000-32767. Never one picked before by this
# script run (in $PICKED), which may not be bound yet.
PICKED=" "
pick_port() {
  local p
  for p in "$@"; do
    [[ -n $p && $PICKED != *" $p "* ]] && port_free "$p" && break
    p=""
  done
  if [[ -z $p ]]; then
    for _ in $(seq 200); do
      p=$((20000 + RANDOM % 12768))
      [[ $PICKED != *" $p "* ]] && port_free "$p" && break
      p=""
    done
  fi
  [[ -n $p ]] || die "no free TCP port found on 127.0.0.1"
  PICKED+="$p "
  REPLY=$p
}

# Fail early, naming the port and its holder, when a port that was asked for is taken.
require_free_port() {
  local port=$1 variable=$2
  port_free "$port" ||
    die "port $port on 127.0.0.1 is in use by $(port_holder "$port"): free it, or unset $variable to let this script choose a free port"
}
