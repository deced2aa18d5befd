#!/bin/sh
# Print the Debian mirror URL apt on this machine is configured with.
# Read at run time so that no mirror host name is ever written into the repository.
set -eu
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  url=$(awk '/^URIs:/ {print $2; exit}' "$f")
  case "$url" in *debian-security*|"") ;; *) echo "$url"; exit 0 ;; esac
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  url=$(awk '$1 == "deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f")
  [ -n "$url" ] && { echo "$url"; exit 0; }
done
echo "debian-mirror.sh: no Debian mirror found in apt's configuration" >&2
exit 1
