#!/usr/bin/env bash
# Start a private ejabberd (Debian package) on loopback only, for the end-to-end tests.
#
#   start-ejabberd.sh DIR PORT
#
# DIR gets ejabberd.yml, the Mnesia spool and the logs; the node is named after PORT. Users alice, bob,
# carol and dave (password = name) on domain localhost; MUC service conference.localhost with MAM;
# PEP. Plain TCP on 127.0.0.1:PORT (no TLS), as the Prosody instances of ../shared/realworld.
# stop-ejabberd.sh DIR PORT stops it.
set -euo pipefail
DIR=${1:?usage: start-ejabberd.sh DIR PORT}
PORT=${2:?usage: start-ejabberd.sh DIR PORT}
command -v ejabberdctl >/dev/null || { echo "ejabberd not installed (apt-get install ejabberd)" >&2; exit 1; }
mkdir -p "$DIR/spool" "$DIR/logs"
DIR=$(cd "$DIR" && pwd)
NODE="omemo_test_$PORT@localhost"
cat > "$DIR/ejabberd.yml" <<YML
hosts:
  - localhost
loglevel: info
log_rotate_count: 0
certfiles: []
listen:
  - port: $PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    starttls_required: false
auth_method: internal
auth_password_format: plain
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  announce:
    deny: all
  configure:
    deny: all
  muc_create:
    allow: local
  pubsub_createnode:
    allow: local
  trusted_network:
    allow: all
shaper_rules:
  c2s_shaper: none
modules:
  mod_caps: {}
  mod_disco: {}
  mod_mam:
    assume_mam_usage: true
    default: always
  mod_muc:
    host: conference.localhost
    access: all
    access_create: muc_create
    access_persistent: muc_create
    access_mam: all
    default_room_options:
      mam: true
  mod_offline: {}
  mod_ping: {}
  mod_pubsub:
    access_createnode: pubsub_createnode
    plugins:
      - flat
      - pep
  mod_roster: {}
  mod_stream_mgmt: {}
YML
# Our own ejabberdctl.cfg: Debian's names /etc/ejabberd/ejabberd.yml (all interfaces) unconditionally.
cat > "$DIR/ejabberdctl.cfg" <<CFG
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH=$DIR/ejabberd.pid
EJABBERD_CONFIG_PATH=$DIR/ejabberd.yml
INET_DIST_INTERFACE=127.0.0.1
ERL_EPMD_ADDRESS=127.0.0.1
CFG
if [ "$(id -u)" = 0 ] && id ejabberd >/dev/null 2>&1; then chown -R ejabberd "$DIR"; fi
ctl() { ejabberdctl --ctl-config "$DIR/ejabberdctl.cfg" --config "$DIR/ejabberd.yml" --spool "$DIR/spool" --logs "$DIR/logs" --node "$NODE" "$@"; }
ctl start
for _ in $(seq 1 60); do
  if ctl status >/dev/null 2>&1; then break; fi
  sleep 0.5
done
ctl status >/dev/null
for u in alice bob carol dave; do ctl register "$u" localhost "$u" >/dev/null; done
for _ in $(seq 1 40); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then exit 0; fi
  sleep 0.25
done
echo "ejabberd did not open 127.0.0.1:$PORT" >&2
exit 1
