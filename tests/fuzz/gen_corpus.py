#!/usr/bin/env python3
"""tests/fuzz/gen_corpus.py — writes the small, valid seed inputs of the fuzz targets to tests/fuzz/corpus/<target>/.

Python standard library only (json, struct, zlib, zipfile, tarfile, wave, pickle). JPEG, WebP, FLAC/OGG and MP4
seeds come from tests/fuzz/gen_media.c (libjpeg / libwebp / libsndfile / libav). Deterministic: running it again
rewrites the same bytes."""
import io, json, os, pickle, struct, sys, tarfile, types, wave, zipfile, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- envelope ---------------------------------------------------------------------------------------------------
env = {"v": 1, "job": "J", "task": "J/000042", "stage": "llm", "device": "cpu", "attempt": 1, "max_attempts": 3,
       "input": {"key": "000042", "text": "a cat", "media": [{"kind": "image", "uri": "file:///d/x.jpg"}], "meta": {}},
       "params": {"max_tokens": 16}, "output": "file:///out/J/000042/", "next": ["generate"], "trace": "t1"}
put("envelope", "full.json", json.dumps(env, separators=(",", ":")))
put("envelope", "minimal.json", json.dumps({"v": 1, "job": "j-1", "task": "j-1/000000", "stage": "noop",
                                            "device": "any", "attempt": 2, "max_attempts": 5, "input": {},
                                            "output": "file:///o/j-1/000000/"}))
put("envelope", "unicode.json", json.dumps(dict(env, input={"text": "caf\u00e9 \U0001F600 \\u0000"}), ensure_ascii=False))
put("envelope", "bad-version.json", json.dumps(dict(env, v=2)))

# ---- job YAML -----------------------------------------------------------------------------------------------------
put("job_yaml", "basic.yaml", """job: caption
stage: llm
next: [generate-image, noop]
dataset:
  format: jsonl
  path: prompts.jsonl
  media_root: ./media
output: file:///tmp/out
batch_size: 4
max_attempts: 3
device: cpu
params:
  max_tokens: 32
  temperature: 0.7
  stop: ["\\n", "###"]
limit: 10
""")
put("job_yaml", "webdataset.yaml", """job: enc
id: enc-fixed-1
stage: encode
dataset: {format: webdataset, path: "shard-{000000..000003}.tar"}
output: /tmp/out
device: any
""")
put("job_yaml", "anchors.yaml", """base: &b {format: dir, path: /data}
job: x
stage: noop
dataset: *b
output: o
params: {a: [1, 2.5, true, null, ~, 'q', "z"], b: {c: !!str 3}}
""")

# ---- generic config -----------------------------------------------------------------------------------------------
put("config", "all.yaml", """name: hello
n: 42
x: 0.25
flag: true
mode: bb
extra: {a: [1, {b: c}], d: 1e3}
list: [a, b, c]
nested:
  s: deep
  n: 7
""")
put("config", "scalar-list.yaml", "list: one\nmode: ccc\nn: -100\nx: 1.0\nflag: no\n")
put("config", "multi-doc.yaml", "---\nname: a\n...\n---\nname: b\n")
put("config", "flow.yaml", "{name: 'q\\'', extra: [&a x, *a, !!binary aGVsbG8=], n: 0x10}\n")


# ---- safetensors --------------------------------------------------------------------------------------------------
def safetensors(tensors, meta=None):
    hdr, data = {}, b""
    if meta:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
put("safetensors", "two.safetensors", safetensors([("a.weight", "F32", [2, 2], f32(1, 2, 3, 4)),
                                                   ("b", "I64", [1], struct.pack("<q", 7))], {"format": "pt"}))
put("safetensors", "dtypes.safetensors", safetensors([("h", "F16", [2], b"\x00\x3c\x00\x40"),
                                                      ("bf", "BF16", [1, 1], b"\x80\x3f"),
                                                      ("u8", "U8", [3], b"\x01\x02\x03"),
                                                      ("scalar", "F64", [], struct.pack("<d", 1.5)),
                                                      ("empty", "F32", [0, 4], b"")]))
put("safetensors", "empty.safetensors", safetensors([]))


# ---- pickle (torch.save images) -------------------------------------------------------------------------------------
# Fake torch modules so the standard pickler writes the same globals torch.save does.
torch = types.ModuleType("torch")
tutils = types.ModuleType("torch._utils")
tcoll = sys.modules["collections"]


def _rebuild_tensor_v2(*a):
    pass


tutils._rebuild_tensor_v2 = _rebuild_tensor_v2
_rebuild_tensor_v2.__module__ = "torch._utils"


class FloatStorage:
    pass


class LongStorage:
    pass


for c in (FloatStorage, LongStorage):
    c.__module__ = "torch"
    setattr(torch, c.__name__, c)
torch._utils = tutils
sys.modules["torch"], sys.modules["torch._utils"] = torch, tutils


class T:
    def __init__(self, key, cls, numel, offset, size, stride):
        self.st = ("storage", cls, key, "cpu", numel)
        self.args = (offset, size, stride)

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.st,) + self.args + (False, tcoll.OrderedDict()))


class P(pickle.Pickler):
    def persistent_id(self, obj):
        return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None


def dumps(obj, proto=2):
    b = io.BytesIO()
    P(b, protocol=proto).dump(obj)
    return b.getvalue()


def torch_zip(obj, storages, top="archive"):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(top + "/data.pkl", dumps(obj))
        for k, raw in storages.items():
            z.writestr(top + "/data/" + k, raw)
        z.writestr(top + "/version", "3\n")
    return b.getvalue()


sd = tcoll.OrderedDict([("w", T("0", FloatStorage, 6, 0, (2, 3), (3, 1))),
                        ("wt", T("0", FloatStorage, 6, 0, (3, 2), (1, 3))),
                        ("n", T("1", LongStorage, 1, 0, (), ()))])
storages = {"0": f32(1, 2, 3, 4, 5, 6), "1": struct.pack("<q", 9)}
put("pickle", "zip-state-dict.pt", torch_zip({"model": sd, "epoch": 3, "name": "s2", "lr": 0.5, "none": None}, storages))
put("pickle", "zip-bare-tensor.pt", torch_zip(T("0", FloatStorage, 4, 1, (3,), (1,)), {"0": f32(0, 1, 2, 3)}, "x"))
put("pickle", "zip-list.pt", torch_zip([sd["w"], (sd["n"], 7, True)], storages))
# legacy (pre-1.6): magic, protocol, sys info, main pickle, storage keys, then each storage (int64 numel + bytes)
leg = (pickle.dumps(0x1950a86a20f9469cfc6c, 2) + pickle.dumps(1001, 2)
       + pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2)
       + dumps({"a": sd["w"]}) + pickle.dumps(["0"], 2) + struct.pack("<q", 6) + f32(1, 2, 3, 4, 5, 6))
put("pickle", "legacy.pt", leg)
put("pickle", "bare.pkl", dumps({"x": [1, 2.5, "s", b"b", None, True, (1, 2)], 3: -1}, 2))
put("pickle", "proto4.pkl", dumps(tcoll.OrderedDict(a=1, b=[{}] * 3), 4))


# ---- tar (WebDataset shard) ---------------------------------------------------------------------------------------
def tar(members, fmt=tarfile.GNU_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 0
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


put("tar", "shard.tar", tar([("000000.txt", b"a cat"), ("000000.jpg", b"\xff\xd8\xff\xe0 not really"),
                             ("000000.json", b'{"caption": "c", "n": 1}'), ("000001.cls", b"7"),
                             ("000001.wav", b"RIFF"), ("sub/000002.seg.png", b"\x89PNG"), ("000002.mp4", b"\0\0\0\x18ftyp"),
                             ("000003.npy", b"\x93NUMPY")]))
put("tar", "pax-long-names.tar", tar([("d/" + "k" * 120 + ".txt", b"long"), ("d/" + "k" * 120 + ".json", b"{}")],
                                     tarfile.PAX_FORMAT))
put("tar", "ustar.tar", tar([("a.b.c.txt", b"x" * 700), ("a.b.c.webp", b"RIFF\0\0\0\0WEBP")], tarfile.USTAR_FORMAT))


# ---- images: PNG (zlib) ---------------------------------------------------------------------------------------------
def png(w, h, color_type, depth, rows, plte=None, trns=None, interlace=0):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")


put("image", "rgb.png", png(3, 2, 2, 8, [bytes(range(9)), bytes(range(9, 18))]))
put("image", "gray16.png", png(2, 2, 0, 16, [b"\x00\x01\xff\xff", b"\x80\x00\x00\x00"]))
put("image", "palette.png", png(4, 1, 3, 2, [b"\x1b"], plte=b"\xff\0\0\0\xff\0\0\0\xff\x10\x20\x30", trns=b"\x80"))
put("image", "rgba-interlaced.png", png(2, 2, 6, 8, [b"\1\2\3\4\5\6\7\10", b"\11\12\13\14\15\16\17\20"], interlace=0))


# ---- audio: WAV (wave) ---------------------------------------------------------------------------------------------
def wav(rate, ch, width, frames):
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return b.getvalue()


put("audio", "mono16.wav", wav(16000, 1, 2, struct.pack("<8h", 0, 1000, -1000, 32767, -32768, 5, 6, 7)))
put("audio", "stereo8.wav", wav(8000, 2, 1, bytes(range(0, 256, 16))))
put("audio", "24bit.wav", wav(44100, 1, 3, b"\x00\x00\x80\xff\xff\x7f\x01\x02\x03"))
# IEEE float WAV (format 3), written by hand
fl = f32(0.0, 0.5, -0.5, 1.0)
put("audio", "float.wav", b"RIFF" + struct.pack("<I", 36 + len(fl)) + b"WAVEfmt " +
    struct.pack("<IHHIIHH", 16, 3, 1, 22050, 22050 * 4, 4, 32) + b"data" + struct.pack("<I", len(fl)) + fl)


# ---- SentencePiece ModelProto (hand-written protobuf) -----------------------------------------------------------------
def varint(v):
    o = b""
    while True:
        b = v & 0x7f
        v >>= 7
        if v:
            o += bytes([b | 0x80])
        else:
            return o + bytes([b])


def field_bytes(n, data):
    return varint(n << 3 | 2) + varint(len(data)) + data


def piece(p, score, typ):
    return field_bytes(1, p.encode()) + varint(2 << 3 | 5) + struct.pack("<f", score) + varint(3 << 3) + varint(typ)


pieces = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3)] + [("<0x%02X>" % i, 0, 6) for i in range(256)]
pieces += [("\u2581", -1, 1), ("h", -2, 1), ("e", -3, 1), ("l", -4, 1), ("o", -5, 1), ("\u2581h", -6, 1),
           ("ll", -7, 1), ("\u2581hell", -8, 1), ("\u2581hello", -9, 1), ("w", -10, 1), ("r", -11, 1), ("d", -12, 1)]
trainer = varint(3 << 3) + varint(2)  # model_type BPE
normalizer = field_bytes(1, b"identity") + varint(3 << 3) + varint(1) + varint(4 << 3) + varint(0)
model = b"".join(field_bytes(1, piece(*p)) for p in pieces) + field_bytes(2, trainer) + field_bytes(3, normalizer)
put("sp_model", "bpe.model", model)
put("sp_model", "tiny.model", b"".join(field_bytes(1, piece(*p)) for p in pieces[:3] + pieces[259:262]) + field_bytes(2, trainer))

# ---- tokenizer texts (first byte selects tokenizer and max_len, see fuzz_tokenizers.c) ----------------------------
texts = ["a photo of a cat &amp; a dog &#x27;s", "Hello world  <Img> [IMG0] </Img> caf\u00e9",
         "\u0130stanbul \u00df \u1e9e \U0001F600 \t\n  x", "<|startoftext|>it's<|endoftext|> I'll 123 4.5",
         " <mask> <s></s> hello   world"]
for i, t in enumerate(texts):
    for sel in (0, 1, 2, 3):
        put("tokenizers", "t%d-%d.txt" % (i, sel), bytes([sel | (i << 4)]) + t.encode())
print("corpus written to", ROOT)
