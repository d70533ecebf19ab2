#!/usr/bin/env bash
# Installs (when missing) and starts (when stopped) what `make test` needs, idempotently:
# PostgreSQL on 127.0.0.1:5432 (user postgres, trust on loopback), Redis on
# 127.0.0.1:6379, kcat, promtool, nginx, Java and Maven (the real-Kafka tier runs Apache Kafka as
# a JVM process and resolves its jars from Maven Central once per version), and Chromium
# (the browser test of the Socket.IO live feed).
#
# `make test` and `.ci/run` both run it. Installing needs root and Debian's apt; where a
# tool is missing and cannot be installed, the script fails and says which: with
# CI=true a missing service is a failure, never a skip.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { echo "test-services: $*" >&2; }

apt_updated=""
apt_install() {
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
		say "missing: $* (install it, or run this script as root on Debian)"
		exit 1
	fi
	if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
	say "installing $*"
	apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for <what> <command…>
	local what=$1; shift
	for _ in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
	say "$what did not come up"
	return 1
}

# PostgreSQL on 127.0.0.1:5432, user postgres without a password (trust), as the tests expect.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
	if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
		apt_install postgresql
	fi
	version=$(ls /etc/postgresql | sort -V | tail -n 1)
	hba=/etc/postgresql/$version/main/pg_hba.conf
	if ! grep -q "pulseboard-test" "$hba"; then
		# Trust loopback connections (test machines only): the test URLs carry no password.
		sed -i '1i host all all 127.0.0.1/32 trust # pulseboard-test\nhost all all ::1/128 trust # pulseboard-test' "$hba"
	fi
	conf=/etc/postgresql/$version/main/postgresql.conf
	if ! grep -q "pulseboard-test" "$conf"; then
		# Many test processes, each with pools: room for their connections.
		echo "max_connections = 400 # pulseboard-test" >>"$conf"
	fi
	pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
	wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi

# Redis on 127.0.0.1:6379 (and redis-server itself: the chaos harness starts its own).
command -v redis-server >/dev/null || apt_install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
	mkdir -p /var/lib/redis /var/log/redis
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/pulseboard-test.log
	wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi

# kcat: a Kafka client written by others; the system tests read topics with it.
command -v kcat >/dev/null || apt_install kcat
# promtool (Debian ships it in the prometheus package): the deploy tests check the
# Prometheus config, the alert rules and their unit tests with it.
command -v promtool >/dev/null || apt_install prometheus
# nginx (Debian's nginx-light; its service is not used): the tests that run the services
# behind a real reverse proxy start their own (pkg/testenv/nginx).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx-light
# Java 17+ and Maven for the real Apache Kafka brokers.
command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
# Debian's Chromium: cmd/pulseboard's browser test drives it headless with playwright-core
# (an npm package that downloads no browser of its own); PULSEBOARD_SKIP_BROWSER=1 skips
# that test where no browser can be installed.
[ -x /usr/bin/chromium ] || apt_install chromium
