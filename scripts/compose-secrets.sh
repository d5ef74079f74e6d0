#!/usr/bin/env bash
# Makes the Compose cluster's secrets, once, in DIR (default .mr-compose, or
# $MR_COMPOSE_SECRETS; compose.yaml reads them from there):
#
#   DIR/token    the job token (32 random bytes, base64): mounted into the
#                coordinator and the workers as the Compose secret mr_token;
#                give it to `mr --token-file` on the host
#   DIR/s3.env   AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (random): the
#                one identity SeaweedFS accepts, and the keys the coordinator
#                and workers sign with; `set -a; . DIR/s3.env` for a client
#
# Files that exist are kept. The token must be readable by the containers'
# user (uid 10001): as root it is given to that uid, otherwise made
# readable by all (a warning says so).
set -euo pipefail
dir=${1:-${MR_COMPOSE_SECRETS:-.mr-compose}}
mkdir -p "$dir"
chmod 700 "$dir" 2> /dev/null || true
random() { head -c "$1" /dev/urandom | base64 | tr -d '\n/+=' ; }
if [ ! -s "$dir/token" ]; then
  (umask 077 && random 32 > "$dir/token")
fi
if [ ! -s "$dir/s3.env" ]; then
  (umask 077 && printf 'AWS_ACCESS_KEY_ID=mr%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$(random 12)" "$(random 30)" > "$dir/s3.env")
fi
if [ "$(id -u)" = 0 ]; then
  chown 10001 "$dir/token"
  chmod 600 "$dir/token"
  chmod 711 "$dir"
else
  chmod 644 "$dir/token"
  chmod 755 "$dir"
  echo "compose-secrets.sh: $dir/token is readable by every user of this machine (the containers' uid 10001 must read it; as root it would be given to that uid)" >&2
fi
echo "$dir"
