#!/usr/bin/env python3
"""Write RESP commands that fill Redis with session-store data.

Usage: gen-sessions.py KEYS [SEED] | redis-cli -p PORT --pipe

Each key is a session: a JSON value of about 800 bytes with a random token,
a user agent, roles and a small cart, stored with SET ... EX so most keys
carry an expiry. One key in ten also gets a user hash. The mix of random
tokens and repeated structure compresses about 2.5 times with zstd -3,
like real session stores. Output is deterministic for a given SEED.
"""

import random
import sys

AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]
ROLES = ['["reader"]', '["reader","writer"]', '["admin"]', '["reader","billing"]']


def resp(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def main():
    keys = int(sys.argv[1])
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    write = sys.stdout.buffer.write
    batch = []
    for index in range(keys):
        token = rng.getrandbits(256).to_bytes(32, "big").hex()
        csrf = rng.getrandbits(128).to_bytes(16, "big").hex()
        sig = rng.getrandbits(512).to_bytes(64, "big").hex()
        uid = rng.randrange(1, 2_000_000)
        cart = ",".join('{"sku":"SKU-%05d","qty":%d}' % (rng.randrange(99999), rng.randrange(1, 5)) for _ in range(rng.randrange(0, 6)))
        value = (
            '{"uid":%d,"token":"%s","csrf":"%s","ua":"%s","roles":%s,"locale":"en-GB","tz":"Europe/Berlin",'
            '"created":%d,"last_seen":%d,"cart":[%s],"flash":null,"theme":"dark","mfa":%s,"sig":"%s"}'
            % (uid, token, csrf, rng.choice(AGENTS), rng.choice(ROLES), 1764800000 + index,
               1764800000 + index + rng.randrange(3600), cart, "true" if index % 3 else "false", sig)
        )
        batch.append(resp("SET", "sess:%s" % token[:24], value, "EX", str(1800 + rng.randrange(86400))))
        if index % 10 == 0:
            batch.append(resp("HSET", "user:%d" % uid, "name", "user%d" % uid, "plan", "pro", "sessions", str(rng.randrange(1, 9))))
        if len(batch) >= 1000:
            write(b"".join(batch))
            batch.clear()
    write(b"".join(batch))


if __name__ == "__main__":
    main()
