# Bytes on the wire for one realistic Laravel broadcast (an order with its user and items), as
# herald sends it to a client that negotiated permessage-deflate, against zlib on the same
# message compressed on its own (raw deflate, the RFC 7692 tail removed).
import base64, hashlib, hmac, json, os, socket, sys, time, urllib.request, zlib
port = int(sys.argv[1])
order = {
  "order": {"id": 48213, "number": "ORD-2026-048213", "status": "shipped", "currency": "EUR",
    "subtotal": "184.70", "tax": "35.09", "shipping": "4.90", "total": "224.69",
    "placed_at": "2026-12-01T14:03:27.000000Z", "shipped_at": "2026-12-01T16:41:09.000000Z",
    "tracking_number": "1Z999AA10123456784", "carrier": "UPS",
    "user": {"id": 1932, "name": "Margaret Hamilton", "email": "margaret.hamilton@example.com",
      "email_verified_at": "2025-03-11T09:12:44.000000Z", "created_at": "2025-03-11T09:10:02.000000Z",
      "updated_at": "2026-11-28T18:22:51.000000Z"},
    "shipping_address": {"line1": "221 Baker Street", "line2": None, "city": "London",
      "postcode": "NW1 6XE", "country": "GB"},
    "items": [
      {"id": 90111, "product_id": 311, "sku": "MUG-LOGO-BLK", "name": "Logo mug, black", "quantity": 2, "unit_price": "12.90", "total": "25.80"},
      {"id": 90112, "product_id": 87, "sku": "TSHIRT-ORG-M", "name": "Organic t-shirt, size M", "quantity": 1, "unit_price": "29.00", "total": "29.00"},
      {"id": 90113, "product_id": 512, "sku": "HOODIE-GRY-L", "name": "Hoodie, grey, size L", "quantity": 1, "unit_price": "59.00", "total": "59.00"},
      {"id": 90114, "product_id": 45, "sku": "NOTEBOOK-A5", "name": "Notebook A5, dotted", "quantity": 3, "unit_price": "8.90", "total": "26.70"},
      {"id": 90115, "product_id": 46, "sku": "PEN-SET-3", "name": "Pen set of 3", "quantity": 2, "unit_price": "22.10", "total": "44.20"}]}}
data = json.dumps(order, separators=(",", ":"))
channel, event = "private-App.Models.User.1932", "App\\Events\\OrderShipped"
# The frame text herald sends (data is a JSON string inside the event).
text = json.dumps({"event": event, "channel": channel, "data": data}, separators=(",", ":"))
c = zlib.compressobj(6, zlib.DEFLATED, -15); z = c.compress(text.encode()) + c.flush(zlib.Z_SYNC_FLUSH)
z = z[:-4] if z.endswith(b"\x00\x00\xff\xff") else z
s = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
  f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(4096)
head, buf = buf.split(b"\r\n\r\n", 1)
ext = [l for l in head.decode().split("\r\n") if l.lower().startswith("sec-websocket-extensions")]
def recv():
    global buf
    d = s.recv(65536)
    if not d: raise SystemExit('connection closed')
    buf += d
def frame():
    global buf
    while len(buf) < 2: recv()
    b0, b1 = buf[0], buf[1]; n = b1 & 127; off = 2
    if n == 126:
        while len(buf) < 4: recv()
        n = int.from_bytes(buf[2:4], "big"); off = 4
    elif n == 127:
        while len(buf) < 10: recv()
        n = int.from_bytes(buf[2:10], "big"); off = 10
    while len(buf) < off + n: recv()
    f = (b0, off + n, buf[off:off+n]); buf = buf[off+n:]; return f
def send(obj):
    p = json.dumps(obj).encode(); mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(p)]) if len(p) < 126 else bytes([0x81, 0x80 | 126]) + len(p).to_bytes(2, "big")
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(p)))
def inflate(b0, payload):
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") if b0 & 0x40 else payload
b0, total, payload = frame(); est = json.loads(inflate(b0, payload)); sid = json.loads(est["data"])["socket_id"]
sig = hmac.new(b"app-secret", f"{sid}:{channel}".encode(), hashlib.sha256).hexdigest()
send({"event": "pusher:subscribe", "data": {"channel": channel, "auth": f"app-key:{sig}"}})
frame()
body = json.dumps({"name": event, "channel": channel, "data": data}).encode()
q = f"auth_key=app-key&auth_timestamp={int(time.time())}&auth_version=1.0&body_md5={hashlib.md5(body).hexdigest()}"
sign = hmac.new(b"app-secret", f"POST\n/apps/1/events\n{q}".encode(), hashlib.sha256).hexdigest()
urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/apps/1/events?{q}&auth_signature={sign}", body, {"Content-Type": "application/json"}))
b0, total, payload = frame()
assert inflate(b0, payload).decode() == text, "delivered text differs"
plain_frame = len(text) + (2 if len(text) < 126 else 4)
zlib_frame = len(z) + (2 if len(z) < 126 else 4)
print(json.dumps({"negotiated": ext, "data_bytes": len(data), "message_bytes": len(text), "plain_frame_bytes": plain_frame,
  "herald_compressed": bool(b0 & 0x40), "herald_frame_bytes": total, "zlib_alone_frame_bytes": zlib_frame,
  "herald_over_zlib": round(total / zlib_frame, 4), "plain_over_herald": round(plain_frame / total, 3)}))
