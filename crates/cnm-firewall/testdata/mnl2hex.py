#!/usr/bin/env python3
"""Turns `nft --debug=mnl -f FILE` output into "type hexpayload" lines.

Regenerate a reference (in a throwaway network namespace, nft 1.0.6), for NAME `batch` (the
built-in tables, written by hand) or `fragment` (a declared fragment's rendering, rewritten by
`CNM_BLESS=1 cargo test -p cnm-firewall --lib a_declared_fragment`):
  (head -1 nft-1.0.6-NAME.hex; unshare -n nft --debug=mnl -f nft-1.0.6-NAME.nft 2>&1 \
     | python3 mnl2hex.py | grep -v '^16 \|^17 \|^2576 \|^2561 \|^2564 \|^2570 \|^2583 ') > new.hex
then move new.hex over nft-1.0.6-NAME.hex (the filter drops batch BEGIN/END and nft's own GET
requests).
"""
import re, sys
ansi = re.compile(r'\x1b\[[0-9;]*m')
out = []
cur = None
for raw in sys.stdin:
    line = ansi.sub('', raw.rstrip('\n'))
    m = re.match(r'\|\s*(\d+)\s*\|\s*[A-Z-]+\s*\|\s*\|\s*type \| flags', line)
    if m:
        cur = {'type': int(m.group(1)), 'bytes': bytearray()}
        out.append(cur)
        continue
    if cur is None:
        continue
    m = re.match(r'\|(\d+)\|([N-])([B-])\|(\d+)\|\s*\|len \|flags\| type\|', line)
    if m:
        ln, n, b, ty = int(m.group(1)), m.group(2), m.group(3), int(m.group(4))
        ty |= (0x8000 if n == 'N' else 0) | (0x4000 if b == 'B' else 0)
        cur['bytes'] += ln.to_bytes(2, 'little') + ty.to_bytes(2, 'little')
        continue
    m = re.match(r'\|\s*([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2})\s*\|\s*\|\s*(extra header|data|padding)', line)
    if m:
        cur['bytes'] += bytes(int(x, 16) for x in m.groups()[:4])
for msg in out:
    print(msg['type'], msg['bytes'].hex())
