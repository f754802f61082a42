"""A request-echoing HTTP/1.1 server for the curl differential tests.

Usage: echo_server.py ADDR PORT FILES_DIR

Every answer is deterministic, so two clients sending the same request get the same bytes:
  /status/NNN            status NNN, a short text body
  /redirect/NNN?to=PATH  status NNN with Location: PATH (default /echo)
  /cookies/set?a=1&b=2   Set-Cookie for each pair (Path=/), echoes the request
  /file/NAME             the bytes of FILES_DIR/NAME; NAME.enc (if present) names the
                         Content-Encoding, NAME.type the Content-Type
  /disposition/NAME      a body with Content-Disposition: attachment; filename="NAME"
  /chunked               the echo, in chunks
  /close                 the echo, framed by closing the connection
  /retry-after           503 with Retry-After: 0
  /conditional           304 to any If-(Un)Modified-Since, else the echo
  /delay/S               the echo, after S seconds
  /slow                  a head and a few bytes of a body, then nothing for 30 s
  /hold                  a complete answer, then the connection held open for 30 s (no FIN)
  /cookies/domain?d=D    Set-Cookie a=1 with Domain=D (Path=/), echoes the request
  /broken/garbage        a status line that is not HTTP, then the connection closes
  /broken/badver         "HTTP/1.1 abc OK"
  /broken/many-headers   200,000 header lines
  /broken/huge-header    one header line of 10 MB
  /broken/two-lengths    Content-Length 2, then Content-Length 5, and 5 bytes
  anything else          200, text/plain: the request line, headers and body as received

The echo replaces two values a client chooses at random or by name: the User-Agent value
(ours is not curl's) and the multipart boundary (curl picks it at random).
"""

import os
import re
import socket
import sys
import threading
import time
import urllib.parse

FILES = sys.argv[3] if len(sys.argv) > 3 else "."


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_body(conn, head, rest):
    lines = head.split(b"\r\n")[1:]
    headers = {}
    for line in lines:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += conn.recv(65536)
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += conn.recv(65536)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return headers, body, rest
    length = int(headers.get(b"content-length", b"0"))
    if headers.get(b"expect", b"").lower() == b"100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            break
        rest += data
    return headers, rest[:length], rest[length:]


def normalise(head, body, headers):
    head = re.sub(rb"(?im)^(user-agent:)[^\r\n]*", rb"\1 <agent>", head)
    ctype = headers.get(b"content-type", b"")
    m = re.search(rb"boundary=([^;\s]+)", ctype)
    if m:
        boundary = m.group(1)
        head = head.replace(boundary, b"<boundary>")
        body = body.replace(boundary, b"<boundary>")
    return head + b"\r\n\r\n" + body


def response(status, body, extra=(), reason=b"X"):
    out = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in extra:
        out += k + b": " + v + b"\r\n"
    out += b"Content-Length: %d\r\n\r\n" % len(body)
    return out + body


BROKEN = {
    "/broken/garbage": b"garbage line\r\n\r\nbody",
    "/broken/badver": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nhi",
    "/broken/many-headers": b"HTTP/1.1 200 OK\r\n"
    + b"X: y\r\n" * 200000
    + b"Content-Length: 2\r\n\r\nhi",
    "/broken/huge-header": b"HTTP/1.1 200 OK\r\nX: "
    + b"a" * 10_000_000
    + b"\r\nContent-Length: 2\r\n\r\nhi",
    "/broken/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello",
}


def answer(conn, head, body, headers):
    request_line = head.split(b"\r\n", 1)[0]
    method, target, _ = request_line.split(b" ", 2)
    url = urllib.parse.urlsplit(target.decode("latin-1"))
    path = url.path
    query = urllib.parse.parse_qsl(url.query)
    echo = normalise(head, body, headers)
    text = [(b"Content-Type", b"text/plain")]
    no_body = method == b"HEAD"

    def send(data):
        if no_body:
            data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        conn.sendall(data)

    if path.startswith("/status/"):
        code = int(path.split("/")[2])
        send(response(code, b"status %d\n" % code, text))
    elif path.startswith("/redirect/"):
        code = int(path.split("/")[2])
        to = dict(query).get("to", "/echo")
        send(response(code, b"moved\n", text + [(b"Location", to.encode())]))
    elif path == "/cookies/set":
        cookies = [(b"Set-Cookie", f"{k}={v}; Path=/".encode()) for k, v in query]
        send(response(200, echo, text + cookies))
    elif path.startswith("/file/"):
        name = os.path.basename(path)
        full = os.path.join(FILES, name)
        if not os.path.isfile(full):
            send(response(404, b"no such file\n", text))
            return True
        with open(full, "rb") as f:
            data = f.read()
        extra = []
        for suffix, header in ((".enc", b"Content-Encoding"), (".type", b"Content-Type")):
            if os.path.isfile(full + suffix):
                with open(full + suffix, "rb") as f:
                    extra.append((header, f.read().strip()))
        send(response(200, data, extra))
    elif path.startswith("/disposition/"):
        name = path.split("/", 2)[2].encode()
        disp = [(b"Content-Disposition", b'attachment; filename="' + name + b'"')]
        send(response(200, b"attached body\n", text + disp))
    elif path == "/chunked":
        out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        if not no_body:
            for i in range(0, len(echo), 7):
                piece = echo[i : i + 7]
                out += b"%x\r\n%s\r\n" % (len(piece), piece)
            out += b"0\r\n\r\n"
        conn.sendall(out)
    elif path == "/close":
        out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        conn.sendall(out if no_body else out + echo)
        return False
    elif path == "/conditional":
        stamp = [(b"Last-Modified", b"Sat, 01 Jan 2022 00:00:00 GMT")]
        if b"if-modified-since" in headers or b"if-unmodified-since" in headers:
            conn.sendall(b"HTTP/1.1 304 Not Modified\r\nLast-Modified: Sat, 01 Jan 2022 00:00:00 GMT\r\n\r\n")
        else:
            send(response(200, echo, text + stamp, b"OK"))
    elif path.startswith("/delay/"):
        time.sleep(float(path.split("/")[2]))
        send(response(200, echo, text, b"OK"))
    elif path == "/slow":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes\n")
        time.sleep(30)
        return False
    elif path == "/hold":
        send(response(200, b"held\n", text, b"OK"))
        time.sleep(30)
        return False
    elif path == "/cookies/domain":
        domain = dict(query).get("d", "")
        cookie = [(b"Set-Cookie", f"a=1; Domain={domain}; Path=/".encode())]
        send(response(200, echo, text + cookie))
    elif path.startswith("/broken/"):
        conn.sendall(BROKEN.get(path, b""))
        return False
    elif path == "/retry-after":
        send(response(503, b"busy\n", text + [(b"Retry-After", b"0")]))
    else:
        send(response(200, echo, text, b"OK"))
    return headers.get(b"connection", b"").lower() != b"close"


def serve(conn):
    buf = b""
    try:
        while True:
            head, rest = read_head(conn, buf)
            if head is None:
                return
            headers, body, buf = read_body(conn, head, rest)
            if not answer(conn, head, body, headers):
                return
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
