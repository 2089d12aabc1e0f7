#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft: broker + controller in one JVM) for tests and the demo.
#
#   deploy/local/kafka.sh up     fetch the jars once (Maven Central), format storage once, start,
#                                and return when the broker answers metadata requests (idempotent)
#   deploy/local/kafka.sh down   stop exactly the process `up` started
#   deploy/local/kafka.sh status
#
# Environment: KAFKA_PORT (default 9092; the controller uses KAFKA_PORT+1),
#              EVENTMAIL_CACHE (default .cache at the repository root), KAFKA_HEAP (default 768m),
#              PYTHON (default python3; an interpreter with confluent-kafka, for the readiness check).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
cache=${EVENTMAIL_CACHE:-$root/.cache}
jars=$cache/kafka/jars
state=$cache/kafka/node-$port
pidfile=$state/kafka.pid
log=$state/kafka.log
here=$root/deploy/local/kafka

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
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  # A metadata request through the same client library the service uses.
  "${PYTHON:-python3}" - "$port" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
client = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "logger": None,
                      "socket.connection.setup.timeout.ms": 1000})
md = client.list_topics(timeout=1)
sys.exit(0 if md.brokers else 1)
PY
}

up() {
  if running; then
    echo "kafka: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))" >&2
    return 0
  fi
  fetch_jars
  mkdir -p "$state"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=1000
PROPS
  local cp="$jars/*"
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster
    cluster=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$cp" kafka.tools.StorageTool format -t "$cluster" -c "$state/server.properties" \
      --ignore-formatted > "$state/format.log" 2>&1
  fi
  local start=$SECONDS
  # setsid: the broker outlives this script and a terminal's Ctrl-C; its pid is all we stop.
  setsid java -Xms256m -Xmx"${KAFKA_HEAP:-768m}" -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$here/log4j2.yaml" -Djava.awt.headless=true \
    -cp "$cp" kafka.Kafka "$state/server.properties" >> "$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 240); do
    if ! running; then
      echo "kafka: the broker exited during start-up; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      rm -f "$pidfile"
      return 1
    fi
    if answers; then
      echo "kafka: up on 127.0.0.1:$port in $((SECONDS - start))s (pid $(cat "$pidfile"), log $log)" >&2
      return 0
    fi
    sleep 0.25
  done
  echo "kafka: no answer after 60s; see $log" >&2
  return 1
}

down() {
  if ! running; then
    rm -f "$pidfile"
    echo "kafka: not running on port $port" >&2
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$pidfile"
  echo "kafka: stopped (pid $pid)" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running (pid $(cat "$pidfile"), 127.0.0.1:$port)"; else echo "stopped"; exit 1; fi ;;
  log) echo "$log" ;;
  *) echo "usage: $0 up|down|status|log" >&2; exit 2 ;;
esac
