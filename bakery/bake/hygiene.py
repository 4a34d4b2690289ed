"""What runs on the builder before the snapshot, so no image carries this build's secrets.

HYGIENE removes what every bake leaves by construction (our login key, host keys, histories,
cloud-init's copy of the builder's user data, the builder's hostname in /etc/hostname and its
line in /etc/hosts). LEFTOVER_CHECK then looks for what a recipe
may have left (AWS credentials above all) and the bake refuses to snapshot if it finds any:
deleting a recipe's files silently would hide the mistake, so the recipe must clean up itself.
"""

from __future__ import annotations

HYGIENE = """\
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs --seed; fi
rm -f /etc/ssh/ssh_host_*
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
rm -f /root/.*_history /home/*/.*_history
# cloud-init named the builder in /etc/hostname and /etc/hosts: an instance of the image would
# carry that name until its own cloud-init runs, and resolve it to itself. Files are rewritten in
# place: /etc/hosts is often a bind mount (containers), which a rename cannot replace.
names="$(hostname 2>/dev/null || true) $(cat /etc/hostname 2>/dev/null || true)"
if [ -f /etc/hosts ]; then
  awk -v names="$names" '
    BEGIN { n = split(names, list, " ")
            for (i = 1; i <= n; i++) { short = list[i]; sub(/\\..*/, "", short)
                                       if (short != "localhost") { drop[list[i]] = 1; drop[short] = 1 } } }
    /^[ \\t]*#/ { print; next }
    { for (i = 2; i <= NF; i++) if ($i in drop) next; print }' /etc/hosts > /tmp/bakery-hosts
  cat /tmp/bakery-hosts > /etc/hosts
fi
if [ -f /etc/hostname ]; then echo localhost > /etc/hostname; fi
rm -rf /tmp/bakery-* /var/tmp/bakery-*
if [ -f /etc/machine-id ]; then truncate -s 0 /etc/machine-id; fi
sync
"""

# One "leftover: PATH (why)" line per finding. Content is searched only where configuration
# and home directories live (not /usr or /opt: SDKs ship AWS's documented example key), and
# AWS's example key itself is not a finding.
LEFTOVER_CHECK = r"""
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys /etc/ssh/ssh_host_*key \
         /root/.*_history /home/*/.*_history /var/lib/cloud/seed/*/user-data /var/lib/cloud/instance \
         /root/.aws/credentials /home/*/.aws/credentials; do
  [ -e "$f" ] && echo "leftover: $f"
done
for d in /root /home /etc /srv /var/lib/cloud /var/log/cloud-init.log; do [ -e "$d" ] && echo "$d"; done |
  xargs -r grep -rIsoE '(AKIA|ASIA)[A-Z0-9]{16}|aws_secret_access_key[[:space:]]*[=:][[:space:]]*[^[:space:]]+' 2>/dev/null |
  grep -v 'AKIAIOSFODNN7EXAMPLE' | cut -d: -f1 | sort -u | sed 's/^/leftover: /; s/$/ (AWS credentials)/'
exit 0
"""


def findings(lines: list[str]) -> list[str]:
    return [line.removeprefix("leftover: ").strip() for line in lines if line.startswith("leftover: ")]
