#!/usr/bin/env python3
"""inpaint: fill each box of an image with the mean colour of a thin frame around it.

An exec node (language.md section 5): one JSON object per line on stdin,
{"batch": [{"id": n, "args": [image, boxes]}]}, one per line on stdout,
{"results": [{"id": n, "ok": image} | {"id": n, "error": "..."}]}.
Images cross the pipe as {"$base64": "<PNG bytes>"}; boxes as {"x", "y", "w", "h"}.
Python 3 standard library only: a minimal PNG reader/writer (8-bit RGB/RGBA/grey, no
interlacing) built on zlib.
"""
import base64
import json
import struct
import sys
import zlib


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or interlace != 0 or ctype not in (0, 2, 4, 6):
                raise ValueError("unsupported PNG (need 8-bit, not interlaced, no palette)")
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        f = raw[i]
        line = bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                line[x] = (line[x] + paeth(a, b, c)) & 255
        rows.append(line)
        prev = line
    rgb = bytearray()
    for line in rows:
        for x in range(width):
            px = line[x * channels:(x + 1) * channels]
            rgb += bytes((px[0], px[0], px[0])) if channels <= 2 else px[:3]
    return width, height, rgb


def write_png(width, height, rgb):
    raw = b"".join(b"\x00" + bytes(rgb[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def inpaint(image, boxes):
    width, height, rgb = read_png(base64.b64decode(image["$base64"]))
    for b in boxes:
        x0, y0 = max(0, int(round(b["x"]))), max(0, int(round(b["y"])))
        x1, y1 = min(width, int(round(b["x"] + b["w"]))), min(height, int(round(b["y"] + b["h"])))
        if x1 <= x0 or y1 <= y0:
            continue
        total, n = [0, 0, 0], 0
        for y in range(max(0, y0 - 2), min(height, y1 + 2)):
            for x in range(max(0, x0 - 2), min(width, x1 + 2)):
                if x0 <= x < x1 and y0 <= y < y1:
                    continue
                p = (y * width + x) * 3
                for c in range(3):
                    total[c] += rgb[p + c]
                n += 1
        mean = bytes(t // n for t in total) if n else b"\x80\x80\x80"
        for y in range(y0, y1):
            p = (y * width + x0) * 3
            rgb[p:p + (x1 - x0) * 3] = mean * (x1 - x0)
    return {"$base64": base64.b64encode(write_png(width, height, rgb)).decode("ascii")}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        results = []
        for item in json.loads(line).get("batch", []):
            try:
                image, boxes = item["args"]
                results.append({"id": item["id"], "ok": inpaint(image, boxes)})
            except Exception as e:  # one bad item is that item's error, not the program's
                results.append({"id": item.get("id"), "error": "inpaint: %s" % e})
        sys.stdout.write(json.dumps({"results": results}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
