#!/bin/sh
# Makes what a deployed coordinator needs to turn TLS and tokens on, once: a private CA, a server
# certificate for the names clients and probes dial, and a tokens file with one admin token.
# Idempotent: files already there are kept (rotate by deleting them and restarting, see the README).
#   make-secrets.sh DIR [SERVER_NAMES]     SERVER_NAMES default: coordinator,localhost
# SERVER_NAMES: comma-separated host names and IPv4/IPv6 addresses (addresses become IP: entries).
set -eu
dir=${1:?usage: make-secrets.sh DIR [SERVER_NAMES]}
names=${2:-coordinator,localhost}
owner=${SECRETS_OWNER:-}  # uid:gid that must read them (the coordinator's user)

# The subjectAltName for comma-separated NAMES: IPv4 and IPv6 addresses as IP: entries (a client
# dialing an address checks IP entries only), host names as DNS: entries, plus IP:127.0.0.1 for
# local probes. Anything else (spaces, empty names, 999.1.1.1) is refused naming it.
subject_alt_names() {
  printf '%s\n' "$1" | awk -F, '
    function ipv4(s,   parts, n, i) {
      if (s !~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) return 0
      n = split(s, parts, ".")
      for (i = 1; i <= n; i++) if (length(parts[i]) > 3 || parts[i] + 0 > 255) return 0
      return 1
    }
    function hex_groups(s,   parts, n, i) {  # count of 1-4 digit hex groups, -1 if malformed
      if (s == "") return 0
      n = split(s, parts, ":")
      for (i = 1; i <= n; i++) if (parts[i] !~ /^[0-9A-Fa-f]([0-9A-Fa-f]?[0-9A-Fa-f]?[0-9A-Fa-f]?)$/) return -1
      return n
    }
    function ipv6(s,   cut, groups, left, right, at) {
      if (s !~ /^[0-9A-Fa-f:.]+$/ || index(s, ":") == 0) return 0
      groups = 8
      if (index(s, ".")) {  # an embedded IPv4 address is the last two groups
        cut = match(s, /:[^:]*$/)
        if (!ipv4(substr(s, cut + 1))) return 0
        s = substr(s, 1, cut)
        groups = 6
        if (s ~ /[^:]:$/) s = substr(s, 1, length(s) - 1)
      }
      at = index(s, "::")
      if (at == 0) return hex_groups(s) == groups
      if (index(substr(s, at + 1), "::")) return 0
      left = hex_groups(substr(s, 1, at - 1)); right = hex_groups(substr(s, at + 2))
      return left >= 0 && right >= 0 && left + right < groups
    }
    function hostname(s,   labels, n, i) {  # no {m,n} in regular expressions: mawk lacks them
      if (length(s) > 253 || s ~ /^[0-9.]+$/) return 0
      if (s !~ /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/) return 0
      n = split(s, labels, ".")
      for (i = 1; i <= n; i++) if (length(labels[i]) > 63) return 0
      return 1
    }
    {
      for (i = 1; i <= NF; i++) {
        name = $i
        if (ipv4(name) || ipv6(name)) entry = "IP:" name
        else if (hostname(name)) entry = "DNS:" name
        else {
          printf "make-secrets.sh: SERVER_NAMES: %s is neither a host name (letters, digits, hyphens and dots, as in coordinator.example.com) nor an IPv4 or IPv6 address; give comma-separated names without spaces\n", (name == "" ? "an empty name" : "\"" name "\"") > "/dev/stderr"
          failed = 1
          exit 2
        }
        if (!(entry in seen)) { seen[entry] = 1; san = san (san == "" ? "" : ",") entry }
      }
    }
    END { if (failed) exit 2; if (!("IP:127.0.0.1" in seen)) san = san ",IP:127.0.0.1"; print san }'
}

san=$(subject_alt_names "$names") || exit 2  # bad names are refused before anything is made
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
