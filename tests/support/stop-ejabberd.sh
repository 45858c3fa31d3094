#!/usr/bin/env bash
# Stop an ejabberd started by start-ejabberd.sh DIR PORT.
set -uo pipefail
DIR=${1:?usage: stop-ejabberd.sh DIR PORT}
PORT=${2:?usage: stop-ejabberd.sh DIR PORT}
DIR=$(cd "$DIR" && pwd)
ejabberdctl --ctl-config "$DIR/ejabberdctl.cfg" --config "$DIR/ejabberd.yml" --spool "$DIR/spool" --logs "$DIR/logs" --node "omemo_test_$PORT@localhost" stop >/dev/null 2>&1
ejabberdctl --ctl-config "$DIR/ejabberdctl.cfg" --config "$DIR/ejabberd.yml" --spool "$DIR/spool" --logs "$DIR/logs" --node "omemo_test_$PORT@localhost" stopped >/dev/null 2>&1 || true
