#!/usr/bin/env python3
"""Standard-library S3 client (hand-written SigV4) to check an S3 endpoint.

Reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL
from the environment (e.g. `. DIR/env` as written by scripts/s3-server.sh).

  s3-check.py check         run the feature checks; exit 1 if a required one fails
  s3-check.py ready BUCKET  create BUCKET, write/read/delete a probe object
                            (used by s3-server.sh to wait for readiness)
  s3-check.py mb BUCKET     create BUCKET (an existing one is fine)
  s3-check.py put BUCKET/KEY FILE   upload FILE as an object
  s3-check.py ls BUCKET[/PREFIX]    print `KEY SIZE` for each object under it
  s3-check.py get BUCKET/KEY        write the object to standard output
Tests set up and inspect buckets with it, independently of the framework's
own client.
"""
import datetime, hashlib, hmac, os, re, sys, urllib.parse, http.client, uuid

ENV = os.environ
KEY, SECRET = ENV.get("AWS_ACCESS_KEY_ID", ""), ENV.get("AWS_SECRET_ACCESS_KEY", "")
REGION = ENV.get("AWS_REGION", "us-east-1")
URL = urllib.parse.urlsplit(ENV.get("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"))
TIMEOUT = float(ENV.get("S3_CHECK_TIMEOUT", "30"))


def q(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def req(method, path, query=None, body=b"", headers=None, key=KEY, secret=SECRET, sign=True):
    """One path-style request; returns (status, headers dict lower-case, body)."""
    query, headers = dict(query or {}), dict(headers or {})
    host = URL.netloc
    cpath = q(path, safe="/-_.~")
    cquery = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query.items()))
    if sign:
        now = datetime.datetime.now(datetime.timezone.utc)
        amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers.setdefault("x-amz-content-sha256", hashlib.sha256(body).hexdigest())
        headers.update({"host": host, "x-amz-date": amzdate})
        h = {k.lower(): str(v).strip() for k, v in headers.items()}
        signed = ";".join(sorted(h))
        creq = "\n".join([method, cpath, cquery, "".join(f"{k}:{h[k]}\n" for k in sorted(h)),
                          signed, h["x-amz-content-sha256"]])
        scope = f"{day}/{REGION}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + secret).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}")
    conn = http.client.HTTPConnection(URL.hostname, URL.port or 80, timeout=TIMEOUT)
    try:
        conn.request(method, cpath + ("?" + cquery if cquery else ""), body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def ready(bucket):
    s, _, b = req("PUT", f"/{bucket}")
    if s not in (200, 409):  # 409: BucketAlreadyOwnedByYou/Exists
        sys.exit(f"create bucket: {s} {b[:200]!r}")
    s, _, b = req("PUT", f"/{bucket}/probe", body=b"ok")
    if s != 200:
        sys.exit(f"put: {s} {b[:200]!r}")
    s, _, b = req("GET", f"/{bucket}/probe")
    if (s, b) != (200, b"ok"):
        sys.exit(f"get: {s} {b[:200]!r}")
    req("DELETE", f"/{bucket}/probe")
    req("DELETE", f"/{bucket}")


def check():
    failures, notes = [], []

    def expect(name, cond, detail="", required=True):
        print(f"{'ok  ' if cond else ('FAIL' if required else 'no  ')} {name}"
              + ("" if cond else f"  ({detail})"))
        if not cond:
            (failures if required else notes).append(name)
        return cond

    bkt = "mr-check-" + uuid.uuid4().hex[:8]
    s, _, b = req("PUT", f"/{bkt}")
    expect("create bucket", s == 200, f"{s} {b[:200]!r}")
    data = bytes(range(256)) * 4
    s, h, b = req("PUT", f"/{bkt}/dir/a.bin", body=data)
    expect("put object", s == 200 and "etag" in h, f"{s} {b[:200]!r}")
    etag = h.get("etag", "")
    s, h, b = req("HEAD", f"/{bkt}/dir/a.bin")
    expect("head object (content-length, etag)", s == 200 and h.get("content-length") == str(len(data))
           and h.get("etag") == etag, f"{s} {h}")
    s, h, b = req("GET", f"/{bkt}/dir/a.bin", headers={"Range": "bytes=10-19"})
    expect("ranged GET -> 206 + right bytes", s == 206 and b == data[10:20]
           and h.get("content-range") == f"bytes 10-19/{len(data)}", f"{s} {h.get('content-range')} {b[:40]!r}")
    s, h, b = req("GET", f"/{bkt}/dir/a.bin", headers={"Range": "bytes=1000-"})
    expect("ranged GET open-ended", s == 206 and b == data[1000:], f"{s} {len(b)}")
    s, _, b = req("PUT", f"/{bkt}/unsigned", body=b"u", headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    expect("put with UNSIGNED-PAYLOAD", s == 200, f"{s} {b[:200]!r}")
    for k in ("dir/b.bin", "dir/sub/c.bin", "other/d.bin"):
        req("PUT", f"/{bkt}/{k}", body=b"x")
    s, _, b = req("GET", f"/{bkt}", query={"list-type": "2", "prefix": "dir/"})
    keys = re.findall(rb"<Key>([^<]*)</Key>", b)
    expect("ListObjectsV2 prefix", s == 200 and keys == [b"dir/a.bin", b"dir/b.bin", b"dir/sub/c.bin"], f"{s} {keys}")
    s, _, b = req("GET", f"/{bkt}", query={"list-type": "2", "prefix": "dir/", "delimiter": "/"})
    keys, cps = re.findall(rb"<Key>([^<]*)</Key>", b), re.findall(rb"<Prefix>([^<]*)</Prefix>", b)
    expect("ListObjectsV2 delimiter", s == 200 and keys == [b"dir/a.bin", b"dir/b.bin"] and b"dir/sub/" in cps,
           f"{s} {keys} {cps}")
    s, _, b = req("GET", f"/{bkt}", query={"list-type": "2", "prefix": "dir/", "max-keys": "1"})
    tok = re.findall(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", b)
    ok = s == 200 and len(tok) == 1
    if ok:
        s, _, b = req("GET", f"/{bkt}", query={"list-type": "2", "prefix": "dir/", "max-keys": "1",
                                                "continuation-token": tok[0].decode()})
        ok = s == 200 and re.findall(rb"<Key>([^<]*)</Key>", b) == [b"dir/b.bin"]
    expect("ListObjectsV2 pagination", ok, f"{s} {b[:300]!r}")

    # Auth must be enforced.
    s, _, b = req("GET", f"/{bkt}/dir/a.bin", sign=False)
    expect("anonymous GET refused (403)", s == 403, f"{s}")
    s, _, b = req("PUT", f"/{bkt}/anon", body=b"x", sign=False)
    expect("anonymous PUT refused (403)", s == 403, f"{s}")
    s, _, b = req("GET", f"/{bkt}/dir/a.bin", secret="wrong-secret")
    expect("wrong secret refused (403)", s == 403, f"{s}")
    s, _, b = req("GET", f"/{bkt}/dir/a.bin", key="unknown-key")
    expect("unknown key refused (403)", s == 403, f"{s}")

    # Conditional PUT (object_store PutMode::Create / Update).
    s, _, b = req("PUT", f"/{bkt}/dir/a.bin", body=b"new", headers={"If-None-Match": "*"})
    expect("PUT If-None-Match:* on existing -> 412", s == 412, f"{s} {b[:200]!r}", required=False)
    s, _, b = req("PUT", f"/{bkt}/cond/new", body=b"new", headers={"If-None-Match": "*"})
    expect("PUT If-None-Match:* on new key -> 200", s == 200, f"{s} {b[:200]!r}", required=False)
    s, _, b = req("PUT", f"/{bkt}/dir/a.bin", body=b"new", headers={"If-Match": '"0000"'})
    expect("PUT If-Match wrong etag -> 412", s == 412, f"{s} {b[:200]!r}", required=False)
    s, _, b = req("PUT", f"/{bkt}/cond/new", body=b"new2", headers={"If-Match": req("HEAD", f"/{bkt}/cond/new")[1].get("etag", "")})
    expect("PUT If-Match right etag -> 200", s == 200, f"{s} {b[:200]!r}", required=False)
    s, _, b = req("GET", f"/{bkt}/dir/a.bin")
    expect("object unchanged after refused conditional PUTs", b == data, f"{len(b)}")
    s, _, b = req("GET", f"/{bkt}/dir/a.bin", headers={"If-Match": etag})
    expect("GET If-Match right etag -> 200", s == 200, f"{s}", required=False)

    # Copy.
    s, _, b = req("PUT", f"/{bkt}/copy/a.bin", headers={"x-amz-copy-source": f"/{bkt}/dir/a.bin"})
    s2, _, b2 = req("GET", f"/{bkt}/copy/a.bin")
    expect("copy-object (x-amz-copy-source)", s == 200 and b"CopyObjectResult" in b and b2 == data,
           f"{s} {b[:200]!r} get={s2}", required=False)
    s, _, b = req("PUT", f"/{bkt}/copy/a.bin", headers={"x-amz-copy-source": f"/{bkt}/dir/b.bin",
                                                         "If-None-Match": "*"})
    expect("copy with If-None-Match:* on existing dest -> 412", s == 412, f"{s} {b[:200]!r}", required=False)

    # Multipart.
    def multipart(key, parts, complete_headers=None):
        s, _, b = req("POST", f"/{bkt}/{key}", query={"uploads": ""})
        m = re.search(rb"<UploadId>([^<]*)</UploadId>", b)
        if s != 200 or not m:
            return s, b"initiate: " + b[:200]
        uid = m.group(1).decode()
        xml = "<CompleteMultipartUpload>"
        for i, p in enumerate(parts, 1):
            s, h, b = req("PUT", f"/{bkt}/{key}", query={"partNumber": str(i), "uploadId": uid}, body=p)
            if s != 200:
                return s, b"part: " + b[:200]
            xml += f"<Part><PartNumber>{i}</PartNumber><ETag>{h.get('etag')}</ETag></Part>"
        xml += "</CompleteMultipartUpload>"
        s, _, b = req("POST", f"/{bkt}/{key}", query={"uploadId": uid}, body=xml.encode(),
                      headers=complete_headers)
        if s != 200 or b"<Error>" in b:
            req("DELETE", f"/{bkt}/{key}", query={"uploadId": uid})
        return s, b

    p1, p2 = os.urandom(5 * 1024 * 1024), os.urandom(1000)
    s, b = multipart("mp/big", [p1, p2])
    s2, _, got = req("GET", f"/{bkt}/mp/big")
    expect("multipart upload (5 MiB + 1000 B)", s == 200 and b"<Error>" not in b and got == p1 + p2,
           f"{s} {b[:200]!r} get={s2} len={len(got)}", required=False)
    s, _, got = req("GET", f"/{bkt}/mp/big", headers={"Range": f"bytes={len(p1) - 5}-{len(p1) + 4}"})
    expect("ranged GET across part boundary", s == 206 and got == (p1 + p2)[len(p1) - 5:len(p1) + 5], f"{s}",
           required=False)
    s, b = multipart("mp/big", [b"zz"], {"If-None-Match": "*"})
    expect("multipart complete If-None-Match:* on existing -> 412", s == 412, f"{s} {b[:200]!r}",
           required=False)

    # Bulk delete (object_store delete_stream uses POST ?delete).
    xml = b"<Delete><Object><Key>other/d.bin</Key></Object><Object><Key>unsigned</Key></Object></Delete>"
    import base64
    md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
    s, _, b = req("POST", f"/{bkt}", query={"delete": ""}, body=xml, headers={"Content-MD5": md5})
    expect("DeleteObjects (bulk)", s == 200 and b.count(b"<Deleted>") == 2, f"{s} {b[:300]!r}", required=False)

    # Delete + cleanup.
    s, _, _ = req("DELETE", f"/{bkt}/dir/a.bin")
    s2, _, _ = req("GET", f"/{bkt}/dir/a.bin")
    expect("DELETE object -> 204, then GET -> 404", s == 204 and s2 == 404, f"{s} {s2}")
    s, _, b = req("GET", f"/{bkt}/nope")
    expect("GET missing key -> 404", s == 404, f"{s}")
    s, _, b = req("GET", f"/{bkt}", query={"list-type": "2"})
    for k in re.findall(rb"<Key>([^<]*)</Key>", b):
        req("DELETE", f"/{bkt}/{k.decode()}")
    s, _, b = req("DELETE", f"/{bkt}")
    expect("delete bucket", s == 204, f"{s} {b[:200]!r}")

    print(f"{len(failures)} required check(s) failed" + (f": {failures}" if failures else "")
          + (f"; unsupported: {notes}" if notes else ""))
    return 1 if failures else 0


def expect_ok(what, status, body):
    if status not in (200, 204):
        sys.exit(f"s3-check.py: {what}: {status} {body[:300]!r}")


def list_objects(bucket, prefix):
    """Every (key, size) under prefix, following continuation tokens."""
    found, token = [], None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        s, _, b = req("GET", f"/{bucket}", query=query)
        expect_ok(f"list {bucket}/{prefix}", s, b)
        text = b.decode()
        for block in re.findall(r"<Contents>(.*?)</Contents>", text, re.S):
            key = re.search(r"<Key>(.*?)</Key>", block, re.S).group(1)
            size = re.search(r"<Size>(\d+)</Size>", block).group(1)
            found.append((key.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"), int(size)))
        token = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", text)
        if not token:
            return found
        token = token.group(1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ready":
        ready(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "mb":
        s, _, b = req("PUT", f"/{sys.argv[2]}")
        if s != 409:
            expect_ok(f"create bucket {sys.argv[2]}", s, b)
    elif len(sys.argv) == 4 and sys.argv[1] == "put":
        with open(sys.argv[3], "rb") as f:
            s, _, b = req("PUT", f"/{sys.argv[2]}", body=f.read())
        expect_ok(f"put {sys.argv[2]}", s, b)
    elif len(sys.argv) == 3 and sys.argv[1] == "ls":
        bucket, _, prefix = sys.argv[2].partition("/")
        for key, size in list_objects(bucket, prefix):
            print(key, size)
    elif len(sys.argv) == 3 and sys.argv[1] == "get":
        s, _, b = req("GET", f"/{sys.argv[2]}")
        expect_ok(f"get {sys.argv[2]}", s, b)
        sys.stdout.buffer.write(b)
    elif len(sys.argv) == 2 and sys.argv[1] == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
