#!/usr/bin/env bash
# Apache Kafka (KRaft) for tests and the demo, from the Maven Central jars (no Docker).
#
#   deploy/local/kafka.sh up       fetch the jars once, make certificates and users once, format
#                                  storage once, start every node that is not running, and return
#                                  when the cluster answers metadata requests (idempotent)
#   deploy/local/kafka.sh down     stop exactly the processes `up` started
#   deploy/local/kafka.sh status   "running" (exit 0) when every node runs
#   deploy/local/kafka.sh kill N   kill -9 node N (1..KAFKA_BROKERS), for failover tests; `up` restarts it
#   deploy/local/kafka.sh pid N | log [N] | dir
#   deploy/local/kafka.sh client   the librdkafka settings a client needs (key=value lines)
#
# Environment:
#   KAFKA_PORT     default 9092. Node i (1-based) listens on KAFKA_PORT+2(i-1), its controller on the
#                  next port: one node uses KAFKA_PORT and KAFKA_PORT+1, three use KAFKA_PORT..+5.
#   KAFKA_BROKERS  1 (default: broker + controller in one JVM) or 3 (one JVM per node, each broker and
#                  controller, a 3-voter quorum; replication factor 3 and min.insync.replicas=2 for
#                  every topic created without its own settings, internal topics included).
#   KAFKA_SECURE   0 (default: PLAINTEXT, no authorization) or 1: clients connect with SASL_SSL and
#                  SCRAM-SHA-512; TLS with a CA and a broker certificate made at the first start
#                  (the CA file for clients is `dir`/tls/ca.pem); StandardAuthorizer with
#                  allow.everyone.if.no.acl.found=false; the super user `admin` for set-up and one
#                  SCRAM user per component (KAFKA_USERS), each password in `dir`/secrets/NAME.
#                  The controller listener is mutual TLS with the broker certificate.
#   KAFKA_USERS    default "eventmail-run eventmail-aggregate eventmail-admin eventmail-reader
#                  eventmail-nobody" (fixed at the first start)
#   EVENTMAIL_CACHE (default .cache at the repository root), KAFKA_HEAP (default 768m, 320m per node
#                  of a 3-node cluster), PYTHON (an interpreter with confluent-kafka for the readiness
#                  check; default: the project's .venv, else python3).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
port=${KAFKA_PORT:-9092}
nodes=${KAFKA_BROKERS:-1}
secure=${KAFKA_SECURE:-0}
cache=${EVENTMAIL_CACHE:-$root/.cache}
jars=$cache/kafka/jars
here=$root/deploy/local/kafka
case "$nodes" in 1 | 3) ;; *) echo "kafka: KAFKA_BROKERS must be 1 or 3, not $nodes" >&2; exit 2 ;; esac
case "$secure" in 0 | 1) ;; *) echo "kafka: KAFKA_SECURE must be 0 or 1, not $secure" >&2; exit 2 ;; esac

# The plain single node keeps its historical place; the other layouts have their own.
if [ "$nodes" = 1 ] && [ "$secure" = 0 ]; then
  base=$cache/kafka/node-$port
else
  suffix=""
  if [ "$secure" = 1 ]; then suffix=-secure; fi
  base=$cache/kafka/cluster$nodes$suffix-$port
fi

node_dir() { if [ "$nodes" = 1 ] && [ "$secure" = 0 ]; then echo "$base"; else echo "$base/node-$1"; fi; }
node_port() { echo $((port + 2 * ($1 - 1))); }
pidfile() { echo "$(node_dir "$1")/kafka.pid"; }
logfile() { echo "$(node_dir "$1")/kafka.log"; }

python_bin() {
  # The readiness check talks to the broker through confluent-kafka, like the service does.
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ -x "$root/.venv/bin/python" ]; then echo "$root/.venv/bin/python"; return; fi
  echo python3
}

check_python() {
  local py
  py=$(python_bin)
  if ! "$py" -c 'import confluent_kafka' 2>/dev/null; then
    echo "kafka: the readiness check needs a Python with confluent-kafka; $py has none" \
      "(run \`make install\` for the project's .venv, or set PYTHON=/path/to/python)" >&2
    exit 1
  fi
}

fetch_jars() {
  if [ -f "$jars/.complete" ] && [ "$jars/.complete" -nt "$here/pom.xml" ]; then return; fi
  echo "kafka: fetching broker jars from Maven Central into $jars" >&2
  rm -rf "$jars"
  mkdir -p "$jars"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$jars" >&2
  touch "$jars/.complete"
}

running() {
  local f
  f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

all_running() {
  local i
  for i in $(seq 1 "$nodes"); do running "$i" || return 1; done
}

random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

make_tls() {
  # A CA and one broker certificate (127.0.0.1 and localhost) for every node; made once.
  local tls=$base/tls
  [ -f "$tls/.complete" ] && return
  rm -rf "$tls"
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=eventmail-local-kafka-ca" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=eventmail-kafka-broker" \
      -keyout broker.key -out broker.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > ext.cnf
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext.cnf -out broker.pem 2>/dev/null
    random_secret > keystore.password
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "file:keystore.password" -out broker.p12
    rm -f broker.csr ca.srl ext.cnf
    chmod 600 ca.key broker.key keystore.password broker.p12
  )
  touch "$tls/.complete"
}

make_users() {
  # SCRAM passwords, one file per user (the way a Kubernetes Secret is mounted); made once.
  local dir=$base/secrets user
  [ -f "$dir/.complete" ] && return
  mkdir -p "$dir"
  chmod 700 "$dir"
  for user in admin ${KAFKA_USERS:-eventmail-run eventmail-aggregate eventmail-admin eventmail-reader eventmail-nobody}; do
    [ -f "$dir/$user" ] || (umask 077 && random_secret > "$dir/$user")
  done
  touch "$dir/.complete"
}

voters() {
  local i out=""
  for i in $(seq 1 "$nodes"); do
    out="$out${out:+,}$i@127.0.0.1:$(($(node_port "$i") + 1))"
  done
  echo "$out"
}

write_properties() {
  local i=$1 dir bport cport rf isr
  dir=$(node_dir "$i")
  bport=$(node_port "$i")
  cport=$((bport + 1))
  if [ "$nodes" = 3 ]; then rf=3 isr=2; else rf=1 isr=1; fi
  mkdir -p "$dir"
  {
    cat <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(voters)
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=1000
PROPS
    if [ "$nodes" = 3 ]; then
      # A killed node's partitions get a new leader quickly; an unclean election never loses data.
      printf 'unclean.leader.election.enable=false\nreplica.lag.time.max.ms=10000\n'
      printf 'broker.session.timeout.ms=6000\nbroker.heartbeat.interval.ms=1000\n'
    fi
    if [ "$secure" = 1 ]; then
      local tls=$base/tls
      cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_SSL://127.0.0.1:$bport
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$base/secrets/admin")";
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$(cat "$tls/keystore.password")
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.controller.ssl.client.auth=required
ssl.endpoint.identification.algorithm=https
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:CN=eventmail-kafka-broker
PROPS
    else
      cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
    fi
  } > "$dir/server.properties"
  chmod 600 "$dir/server.properties"
}

client_settings() {
  # What a librdkafka client needs, as key=value lines (secrets as files, never inline).
  local i out=""
  for i in $(seq 1 "$nodes"); do out="$out${out:+,}127.0.0.1:$(node_port "$i")"; done
  echo "bootstrap.servers=$out"
  if [ "$secure" = 1 ]; then
    echo "security.protocol=SASL_SSL"
    echo "sasl.mechanisms=SCRAM-SHA-512"
    echo "ssl.ca.location=$base/tls/ca.pem"
    echo "secrets.dir=$base/secrets"
  fi
}

answers() {
  # Metadata through the same client library the service uses, asked of every node on its own
  # port (a node restarted after kill -9 counts only once it answers itself): all nodes registered.
  "$(python_bin)" -c '
import sys
from pathlib import Path
from confluent_kafka.admin import AdminClient
nodes = int(sys.argv[1])
settings = dict(line.split("=", 1) for line in sys.argv[2:])
secrets = settings.pop("secrets.dir", None)
config = {**settings, "logger": None, "socket.connection.setup.timeout.ms": 1000}
if secrets:
    config["sasl.username"] = "admin"
    config["sasl.password"] = (Path(secrets) / "admin").read_text().strip()
for server in settings["bootstrap.servers"].split(","):
    md = AdminClient({**config, "bootstrap.servers": server}).list_topics(timeout=2)
    if len(md.brokers) < nodes or md.orig_broker_name.rsplit("/", 1)[0].split("://")[-1] != server:
        sys.exit(1)
' "$nodes" $(client_settings) 2>/dev/null
}

format_node() {
  local i=$1 dir cp="$jars/*" user
  dir=$(node_dir "$i")
  [ -f "$dir/data/meta.properties" ] && return
  local args=(format -t "$(cat "$base/cluster.id")" -c "$dir/server.properties" --ignore-formatted)
  if [ "$secure" = 1 ]; then
    for user in "$base"/secrets/*; do
      args+=(--add-scram "SCRAM-SHA-512=[name=$(basename "$user"),password=$(cat "$user")]")
    done
  fi
  java -cp "$cp" kafka.tools.StorageTool "${args[@]}" > "$dir/format.log" 2>&1 || {
    echo "kafka: formatting node $i failed; see $dir/format.log" >&2
    tail -n 20 "$dir/format.log" >&2
    exit 1
  }
}

start_node() {
  local i=$1 dir heap
  dir=$(node_dir "$i")
  if [ "$nodes" = 3 ]; then heap=${KAFKA_HEAP:-320m}; else heap=${KAFKA_HEAP:-768m}; fi
  # setsid: the broker outlives this script and a terminal's Ctrl-C; its pid is all we stop.
  setsid java -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$here/log4j2.yaml" -Djava.awt.headless=true \
    -cp "$jars/*" kafka.Kafka "$dir/server.properties" >> "$dir/kafka.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$i")"
}

up() {
  local what="127.0.0.1:$port"
  if [ "$nodes" = 3 ]; then what="3 nodes on 127.0.0.1:$port..$((port + 5))"; fi
  if [ "$secure" = 1 ]; then what="$what (SASL_SSL)"; fi
  if all_running; then
    echo "kafka: already running: $what" >&2
    return 0
  fi
  check_python
  fetch_jars
  mkdir -p "$base"
  if [ "$secure" = 1 ]; then make_tls; make_users; fi
  [ -f "$base/cluster.id" ] || java -cp "$jars/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$base/cluster.id"
  local i start=$SECONDS
  local -a offset=() retries=()
  for i in $(seq 1 "$nodes"); do
    running "$i" && continue
    write_properties "$i"
    format_node "$i"
    offset[i]=$(stat -c %s "$(logfile "$i")" 2>/dev/null || echo 0)
    retries[i]=0
    start_node "$i"
  done
  local limit=${KAFKA_START_TIMEOUT:-120}
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    for i in $(seq 1 "$nodes"); do
      if ! running "$i"; then
        # A port of ours can be taken for a moment as the local port of some other connection
        # when it lies in the ephemeral range (32768 and up): try again a few times.
        if [ "${retries[i]:-5}" -lt 5 ] &&
          tail -c +$((${offset[i]:-0} + 1)) "$(logfile "$i")" | grep -q "Address already in use"; then
          retries[i]=$((retries[i] + 1))
          echo "kafka: node $i: a port was in use; starting it again (${retries[i]}/5)" >&2
          sleep 1
          offset[i]=$(stat -c %s "$(logfile "$i")")
          start_node "$i"
          continue
        fi
        echo "kafka: node $i exited during start-up; last lines of $(logfile "$i"):" >&2
        tail -n 30 "$(logfile "$i")" >&2
        rm -f "$(pidfile "$i")"
        return 1
      fi
    done
    if answers; then
      echo "kafka: up: $what in $((SECONDS - start))s (log $(logfile 1))" >&2
      return 0
    fi
    sleep 0.25
  done
  echo "kafka: no answer after ${limit}s from $what; see $(logfile 1)" >&2
  return 1
}

down() {
  local i any=0
  for i in $(seq 1 "$nodes"); do if running "$i"; then any=1; fi; done
  if [ "$any" = 0 ]; then
    for i in $(seq 1 "$nodes"); do rm -f "$(pidfile "$i")"; done
    echo "kafka: not running on port $port" >&2
    return 0
  fi
  # Every node at once: a node stopped after its peers waits for a controller quorum that is gone
  # (30 s, then it is killed); stopped together, they shut down while the quorum still answers.
  local -a pids=()
  for i in $(seq 1 "$nodes"); do
    if running "$i"; then
      pids[i]=$(cat "$(pidfile "$i")")
      kill -TERM "${pids[i]}"
    else
      rm -f "$(pidfile "$i")"
    fi
  done
  for _ in $(seq 1 120); do
    any=0
    for i in "${!pids[@]}"; do if kill -0 "${pids[i]}" 2>/dev/null; then any=1; fi; done
    [ "$any" = 0 ] && break
    sleep 0.25
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      kill -KILL "${pids[i]}"
      echo "kafka: node $i did not stop in 30 s; killed" >&2
    fi
    rm -f "$(pidfile "$i")"
    echo "kafka: stopped node $i (pid ${pids[i]})" >&2
  done
}

kill_node() {
  local i=${1:?usage: $0 kill NODE}
  running "$i" || { echo "kafka: node $i is not running" >&2; return 1; }
  local pid
  pid=$(cat "$(pidfile "$i")")
  kill -KILL "$pid"
  # Gone, ports released, before `up` may start it again.
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  rm -f "$(pidfile "$i")"
  echo "kafka: killed node $i (pid $pid)" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status)
    if all_running; then echo "running ($nodes node(s), 127.0.0.1:$port)"; else echo "stopped"; exit 1; fi ;;
  kill) kill_node "${2:-}" ;;
  pid) cat "$(pidfile "${2:-1}")" ;;
  log) logfile "${2:-1}" ;;
  dir) echo "$base" ;;
  client) client_settings ;;
  python) python_bin ;;
  *) echo "usage: $0 up|down|status|kill N|pid N|log [N]|dir|client|python" >&2; exit 2 ;;
esac
