#!/bin/sh
# Makes what a deployed coordinator needs to turn TLS and tokens on, once: a private CA, a server
# certificate for the names clients and probes dial, and a tokens file with one admin token.
# Idempotent: files already there are kept (rotate by deleting them and restarting, see the README).
#   make-secrets.sh DIR [SERVER_NAMES]     SERVER_NAMES default: coordinator,localhost
set -eu
dir=${1:?usage: make-secrets.sh DIR [SERVER_NAMES]}
names=${2:-coordinator,localhost}
owner=${SECRETS_OWNER:-}  # uid:gid that must read them (the coordinator's user)
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -f ca.pem ]; then
  echo "making a private CA in $dir/ca.pem"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=gradfleet CA" -keyout ca.key -out ca.pem 2>/dev/null
fi
if [ ! -f server.pem ]; then
  echo "making a server certificate for $names, signed by that CA"
  san=$(echo "$names" | tr ',' '\n' | sed 's/^/DNS:/' | paste -sd, -),IP:127.0.0.1
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=gradfleet coordinator" \
    -keyout server.key -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.csr server.ext
fi
if [ ! -f tokens ]; then
  echo "making an admin token in $dir/tokens (and admin.token for clients)"
  token=$(openssl rand -hex 32)
  printf '%s admin admin\n' "$token" > tokens
  printf '%s\n' "$token" > admin.token
fi
chmod 644 ca.pem
[ -n "$owner" ] && chown "$owner" ./* || true
echo "secrets ready in $dir: ca.pem (give to clients), admin.token (keep private)"
