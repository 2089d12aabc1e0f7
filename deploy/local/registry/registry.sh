#!/usr/bin/env bash
# A Schema Registry with the Confluent REST API, for tests and the demo: Apicurio Registry with its
# KafkaSQL storage, so every schema lives in a topic of the Kafka broker it is pointed at.
#
#   deploy/local/registry/registry.sh up     fetch the registry once (Maven Central), start it and
#                                             return when its Confluent API answers (idempotent)
#   deploy/local/registry/registry.sh down   stop exactly the process `up` started
#   deploy/local/registry/registry.sh status | log | url
#
# `url` prints what clients take as the Schema Registry URL (EVENTMAIL_SCHEMA_REGISTRY__URL):
# http://127.0.0.1:PORT/apis/ccompat/v7.
#
# Environment: REGISTRY_PORT (default 8081), REGISTRY_KAFKA (bootstrap servers of the broker that
#              stores the schemas; default 127.0.0.1:$KAFKA_PORT, KAFKA_PORT defaulting to 9092),
#              REGISTRY_TOPIC (default _schemas: the registry keeps its journal in REGISTRY_TOPIC-journal
#              and snapshots in REGISTRY_TOPIC-snapshots; give each registry its own),
#              EVENTMAIL_CACHE (default .cache at the repository root), REGISTRY_HEAP (default 384m).
# Needs Java 17 or later (the same as the Kafka broker of deploy/local/kafka.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
port=${REGISTRY_PORT:-8081}
kafka=${REGISTRY_KAFKA:-127.0.0.1:${KAFKA_PORT:-9092}}
topic=${REGISTRY_TOPIC:-_schemas}
cache=${EVENTMAIL_CACHE:-$root/.cache}
version=$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$here/pom.xml")
dist=$cache/registry/apicurio-registry-$version
state=$cache/registry/node-$port
pidfile=$state/registry.pid
log=$state/registry.log
url=http://127.0.0.1:$port/apis/ccompat/v7

fetched() {
  [ -f "$dist/.complete" ] && [ "$dist/.complete" -nt "$here/pom.xml" ]
}

fetch() {
  if fetched; then return; fi
  # One fetch at a time: test sessions running side by side share the cache.
  mkdir -p "$cache/registry"
  exec 9> "$cache/registry/.fetch.lock"
  flock 9
  if fetched; then
    exec 9>&-
    return
  fi
  echo "registry: fetching Apicurio Registry $version from Maven Central into $dist" >&2
  rm -rf "$dist"
  mkdir -p "$dist"
  if ! mvn -q -B -f "$here/pom.xml" dependency:copy@fetch -Dregistry.download="$dist" \
    > "$cache/registry/fetch.log" 2>&1; then
    echo "registry: the fetch failed:" >&2
    cat "$cache/registry/fetch.log" >&2
    return 1
  fi
  tar -xzf "$dist"/apicurio-registry-app-*-all.tar.gz -C "$dist"
  rm -f "$dist"/apicurio-registry-app-*-all.tar.gz
  touch "$dist/.complete"
  exec 9>&-
}

# Class-data sharing: the first start records the classes it loads into an archive, written when that
# JVM exits; later starts map it and come up in about half the time. The archive is per JVM build
# (one that does not match is ignored by the JVM), and `down` keeps it only if the JVM exited cleanly.
cds_archive() {
  local jvm
  jvm=$(java -version 2>&1 | cksum | cut -d' ' -f1)
  echo "$dist/classes-$jvm.jsa"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_until_answers() {
  # One process polls until the API lists subjects (storage ready), the JVM exits, or 90 s pass.
  python3 - "$url/subjects" "$(cat "$pidfile")" <<'PY'
import os
import sys
import time
import urllib.request

url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(2)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

up() {
  if running; then
    echo "registry: already running at $url (pid $(cat "$pidfile"))" >&2
    return 0
  fi
  fetch
  mkdir -p "$state"
  local start=$SECONDS archive cds
  archive=$(cds_archive)
  rm -f "$state"/classes.jsa.part.*
  if [ -s "$archive" ]; then
    cds=-XX:SharedArchiveFile="$archive"
  else
    cds=-XX:ArchiveClassesAtExit="$state/classes.jsa.part.$$"
    echo "$archive" > "$state/classes.jsa.target"
  fi
  # setsid: the registry outlives this script and a terminal's Ctrl-C; its pid is all we stop.
  setsid java -Xms64m -Xmx"${REGISTRY_HEAP:-384m}" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "$cds" \
    -Djava.awt.headless=true \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.log.console.format='%d{HH:mm:ss.SSS} %p [%c{2.}] (%t) %m%n' \
    -Dapicurio.storage.kind=kafkasql \
    -Dapicurio.kafkasql.bootstrap.servers="$kafka" \
    -Dapicurio.kafkasql.topic="$topic-journal" \
    -Dapicurio.kafkasql.snapshots.topic="$topic-snapshots" \
    -Dapicurio.events.kafka.topic="$topic-events" \
    -Dapicurio.kafkasql.consumer.poll.timeout=100 \
    -Dapicurio.storage.snapshot.location="$state" \
    -Dapicurio.import.work-dir="$state" \
    -jar "$dist/apicurio-registry-app-$version-runner.jar" >> "$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  if wait_until_answers; then
    echo "registry: up at $url in $((SECONDS - start))s (pid $(cat "$pidfile"), kafka $kafka," \
      "topic $topic-journal, log $log)" >&2
    return 0
  fi
  if running; then
    echo "registry: no answer after 90s; last lines of $log:" >&2
  else
    echo "registry: the registry exited during start-up; last lines of $log:" >&2
    rm -f "$pidfile"
  fi
  tail -n 30 "$log" >&2
  return 1
}

down() {
  if ! running; then
    rm -f "$pidfile"
    echo "registry: not running on port $port" >&2
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  local part
  part=$(ls "$state"/classes.jsa.part.* 2>/dev/null | head -n 1 || true)
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
  elif [ -n "$part" ] && [ -s "$part" ] && [ -f "$state/classes.jsa.target" ]; then
    mv -f "$part" "$(cat "$state/classes.jsa.target")"
  fi
  rm -f "$pidfile" "$state"/classes.jsa.part.* "$state/classes.jsa.target"
  echo "registry: stopped (pid $pid)" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running (pid $(cat "$pidfile"), $url)"; else echo "stopped"; exit 1; fi ;;
  log) echo "$log" ;;
  url) echo "$url" ;;
  *) echo "usage: $0 up|down|status|log|url" >&2; exit 2 ;;
esac
