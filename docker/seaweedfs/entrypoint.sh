#!/bin/sh
# Starts SeaweedFS with the one S3 identity the environment gives, in the
# variables every S3 client reads (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# or their *_FILE forms naming files): a request without them, or signed
# with other keys, is refused (403).
set -eu
read_var() { # NAME: the value of NAME, or the content of the file NAME_FILE names
  eval "value=\${$1:-}"; eval "file=\${$1_FILE:-}"
  if [ -z "$value" ] && [ -n "$file" ]; then value=$(cat "$file"); fi
  [ -n "$value" ] || { echo "seaweedfs: set $1 or $1_FILE" >&2; exit 1; }
  printf '%s' "$value"
}
access=$(read_var AWS_ACCESS_KEY_ID)
secret=$(read_var AWS_SECRET_ACCESS_KEY)
for key in "$access" "$secret"; do
  case "$key" in
    *[!A-Za-z0-9+/=_.-]*) echo "seaweedfs: S3 keys may hold only letters, digits and + / = _ . -" >&2; exit 1 ;;
  esac
done
mkdir -p /data/store
umask 077
cat > /data/s3.json <<JSON
{"identities": [{"name": "mapreduce",
  "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
# One new volume per bucket instead of 7; no JWT.
printf '[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n' > /data/master.toml
: > /data/security.toml
exec weed server -dir=/data/store -ip.bind=0.0.0.0 \
  -master.volumeSizeLimitMB=64 -master.volumePreallocate=false -master.telemetry=false \
  -volume.max=200 -volume.preStopSeconds=0 \
  -filer -s3 -s3.port=8333 -s3.config=/data/s3.json -s3.port.iceberg=0 -s3.port.lance=0
