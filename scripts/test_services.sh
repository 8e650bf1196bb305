#!/usr/bin/env bash
# Starts and installs what the test suite talks to for real, when it is missing:
# MariaDB on 127.0.0.1:3306, PostgreSQL (production-stack test), Debian's chromium (UI test,
# driven by Playwright, which never downloads a browser), the MariaDB JDBC jar and Java 17 (Spark).
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "needs root to run: $*" >&2; return 1; fi
}

apt_updated=""
apt_install() {
  echo "==> apt-get install $*"
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
if ! mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "==> starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1 && break; sleep 1; done
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "==> starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 1; done
fi

command -v chromium >/dev/null 2>&1 || apt_install chromium
[ -f "${SPARK_JDBC_JAR:-/usr/share/java/mariadb-java-client.jar}" ] || apt_install libmariadb-java
command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
