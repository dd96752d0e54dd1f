#!/usr/bin/env bash
# A single-node Kafka broker (KRaft, loopback only) for freshrec's tests and demos.
#
#   scripts/kafka.sh fetch            download the broker jars with Maven (once; skipped when present)
#   scripts/kafka.sh start [DIR]      format + start a broker in DIR (default: a new temp dir);
#                                     prints bootstrap=127.0.0.1:PORT, pid=PID, dir=DIR. A DIR that already
#                                     holds a broker (a stopped one) starts again with its data and ports.
#   scripts/kafka.sh run [DIR]        the same in the foreground: prints bootstrap=, dir= then becomes the
#                                     broker process (for supervisors and the pytest fixture)
#   scripts/kafka.sh stop [DIR] [--keep]
#                                     stop the broker of DIR (default: the last one started; SIGTERM, a
#                                     clean shutdown) and remove DIR; with --keep, keep DIR (data, ports)
#   scripts/kafka.sh kill [DIR]       kill -9 the broker of DIR and keep DIR (a crash, for fault tests)
#   scripts/kafka.sh restart [DIR]    stop the broker of DIR (if running) keeping DIR, and start it again
#                                     on the same port with its data
#   scripts/kafka.sh status [DIR]     print whether the broker of DIR is running, and its bootstrap
#
# Environment:
#   FRESHREC_KAFKA_VERSION   org.apache.kafka:kafka_2.13 version (default below)
#   FRESHREC_KAFKA_HOME      cache dir for the jars (default ~/.cache/freshrec/kafka-<version>); jars in libs/
#   FRESHREC_KAFKA_HEAP      JVM heap (default 512m)
#   FRESHREC_KAFKA_TIMEOUT   seconds to wait for the broker port (default 60)
#
# Needs Java 17+ (the broker) and Maven (fetch only). Several brokers may run at once, each in its own DIR.
set -euo pipefail

VERSION="${FRESHREC_KAFKA_VERSION:-4.4.0}"
HOME_DIR="${FRESHREC_KAFKA_HOME:-$HOME/.cache/freshrec/kafka-$VERSION}"
LIBS="$HOME_DIR/libs"
HEAP="${FRESHREC_KAFKA_HEAP:-512m}"
TIMEOUT="${FRESHREC_KAFKA_TIMEOUT:-60}"
LAST="$HOME_DIR/last-started"

die() { echo "kafka.sh: $*" >&2; exit 1; }

need_java() {
  command -v java >/dev/null 2>&1 || die "java not found: the Kafka broker needs Java 17+"
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  major="${major%%.*}"
  [[ -n "$major" && "$major" -ge 17 ]] || die "java $major found: the Kafka $VERSION broker needs Java 17+"
}

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then
    echo "kafka $VERSION jars present in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven is needed to fetch the Kafka broker jars"
  local work="$HOME_DIR/fetch"
  mkdir -p "$work"
  # The broker's runtime closure (kafka_2.13 pulls server, metadata, raft, storage, clients, scala, jackson)
  # plus a log4j2 binding for slf4j so the broker logs instead of warning about a missing provider
  # (kafka_2.13 declares slf4j-api 1.7, whose binding lookup the slf4j2 binding does not satisfy: pin 2.0).
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>freshrec</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>2.0.17</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS.tmp"
  echo "fetching org.apache.kafka:kafka_2.13:$VERSION and its runtime dependencies into $LIBS ..."
  mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
    || die "mvn could not fetch org.apache.kafka:kafka_2.13:$VERSION (network? version?)"
  ls "$LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "fetch finished but kafka_2.13 jar is missing"
  touch "$LIBS.tmp/.complete"
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
  echo "kafka $VERSION jars in $LIBS ($(ls "$LIBS" | wc -l) files)"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
  python3 -c 'import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

jvm() {
  JVM=(java "-Xmx$HEAP" "-Xms64m" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
       "-Dlog4j2.configurationFile=$DIR/log4j2.properties" "-Dkafka.logs.dir=$DIR" -cp "$LIBS/*")
}

# Writes server.properties and log4j2.properties into DIR and formats the storage; sets JVM, PORT, DIR.
# A DIR that already holds a formatted broker is reused as it is: same ports, same data.
prepare() {
  need_java
  [[ -f "$LIBS/.complete" ]] || die "no broker jars in $LIBS: run 'scripts/kafka.sh fetch' first (needs Maven)"
  DIR="${1:-}"
  if [[ -z "$DIR" ]]; then
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/freshrec-kafka.XXXXXX")"
  fi
  mkdir -p "$DIR/data"
  DIR="$(cd "$DIR" && pwd)"
  if [[ -f "$DIR/server.properties" && -f "$DIR/data/meta.properties" && -f "$DIR/bootstrap" ]]; then
    if running "$DIR"; then die "the broker of $DIR is already running (pid $(cat "$DIR/pid"))"; fi
    PORT="$(cat "$DIR/bootstrap")"
    PORT="${PORT##*:}"
    jvm
    return 0
  fi
  local cport cluster
  PORT="$(free_port)"
  cport="$(free_port)"
  while [[ "$cport" == "$PORT" ]]; do cport="$(free_port)"; done
  cluster="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
  # broker.session.timeout.ms: a broker restarted after a kill -9 waits for its old session to
  # expire before it serves (the default 9 s made such a restart take ~14 s; now ~5 s).
  cat >"$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.enable=false
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
PROPS
  cat >"$DIR/log4j2.properties" <<LOG4J
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $DIR/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
LOG4J
  jvm
  "${JVM[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$DIR/server.properties" \
    >"$DIR/format.log" 2>&1 || { cat "$DIR/format.log" >&2; die "formatting the broker storage failed"; }
  echo "127.0.0.1:$PORT" >"$DIR/bootstrap"
}

run() {
  prepare "${1:-}"
  echo "$$" >"$DIR/pid"
  echo "bootstrap=127.0.0.1:$PORT"
  echo "dir=$DIR"
  exec "${JVM[@]}" kafka.Kafka "$DIR/server.properties" >>"$DIR/stdout.log" 2>&1 </dev/null
}

start() {
  prepare "${1:-}"
  nohup "${JVM[@]}" kafka.Kafka "$DIR/server.properties" >>"$DIR/stdout.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/pid"
  mkdir -p "$HOME_DIR"
  echo "$DIR" >"$LAST"  # 'stop' and 'status' default to the last broker started in the background
  local waited=0
  until port_open "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$DIR/stdout.log" "$DIR/server.log" >&2 2>/dev/null || true
      die "the broker exited during startup (logs in $DIR)"
    fi
    sleep 0.2
    waited=$((waited + 1))
    if ((waited > TIMEOUT * 5)); then
      kill -9 "$pid" 2>/dev/null || true
      tail -n 40 "$DIR/stdout.log" "$DIR/server.log" >&2 2>/dev/null || true
      die "the broker did not open port $PORT within ${TIMEOUT}s (logs in $DIR)"
    fi
  done
  echo "bootstrap=127.0.0.1:$PORT"
  echo "pid=$pid"
  echo "dir=$DIR"
}

resolve_dir() {
  local dir="${1:-}"
  if [[ -z "$dir" ]]; then
    [[ -f "$LAST" ]] || die "no broker started from $HOME_DIR (and no DIR given)"
    dir="$(cat "$LAST")"
  fi
  echo "$dir"
}

running() {
  [[ -f "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null
}

broker_dir() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  [[ -f "$dir/server.properties" ]] || die "$dir is not a broker dir (no server.properties)"
  echo "$dir"
}

# Stops the broker of DIR: SIGTERM and up to 60 s for a clean shutdown, then SIGKILL.
halt() {
  local dir="$1" pid
  running "$dir" || return 0
  pid="$(cat "$dir/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

stop() {
  local dir keep=""
  if [[ "${1:-}" == "--keep" ]]; then keep=1; shift; fi
  if [[ "${2:-}" == "--keep" ]]; then keep=1; fi
  dir="$(broker_dir "${1:-}")"
  halt "$dir"
  if [[ -n "$keep" ]]; then
    echo "stopped broker in $dir (kept: 'scripts/kafka.sh start $dir' starts it again)"
    return 0
  fi
  rm -rf "$dir"
  if [[ -f "$LAST" && "$(cat "$LAST")" == "$dir" ]]; then rm -f "$LAST"; fi
  echo "stopped broker in $dir"
}

kill9() {
  local dir pid
  dir="$(broker_dir "${1:-}")"
  running "$dir" || die "the broker of $dir is not running"
  pid="$(cat "$dir/pid")"
  kill -9 "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  echo "killed broker in $dir (kept: 'scripts/kafka.sh start $dir' starts it again)"
}

restart() {
  local dir
  dir="$(broker_dir "${1:-}")"
  halt "$dir"
  start "$dir"
}

status() {
  local dir
  dir="$(resolve_dir "${1:-}")"
  if running "$dir"; then
    echo "running bootstrap=$(cat "$dir/bootstrap") pid=$(cat "$dir/pid") dir=$dir"
  else
    echo "not running (dir=$dir)"
    return 1
  fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start "${2:-}" ;;
  run) run "${2:-}" ;;
  stop) stop "${2:-}" "${3:-}" ;;
  kill) kill9 "${2:-}" ;;
  restart) restart "${2:-}" ;;
  status) status "${2:-}" ;;
  *) echo "usage: $0 fetch|start [DIR]|run [DIR]|stop [DIR] [--keep]|kill [DIR]|restart [DIR]|status [DIR]" >&2
     exit 2 ;;
esac
