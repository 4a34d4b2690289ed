#!/bin/sh
# Bake-time nginx settings; per-environment values come from user data at launch.
set -eu
title="${SITE_TITLE:-bakery web}"
sed -i "s|<title>.*</title>|<title>${title}</title>|" /var/www/html/index.html
cat > /etc/nginx/conf.d/bakery.conf <<'CONF'
server_tokens off;
CONF
nginx -t
