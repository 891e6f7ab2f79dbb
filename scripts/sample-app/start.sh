#!/bin/sh
# Listen on $PORT (host networking gives each slot its own port).
exec httpd -f -v -p "${PORT:-3000}" -h /www
