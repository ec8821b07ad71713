#!/usr/bin/env python3
"""Render the KServe v2 gRPC protocol (grpc_predict_v2.proto) as .proto text.

The source is the compiled descriptor that ships inside the PyPI `mlserver`
wheel (mlserver/grpc/dataplane_pb2.py, Apache-2.0, Seldon Technologies),
i.e. exactly the protocol the test server speaks. MLServer's file also holds
its model-repository extension and a streaming RPC; only the KServe v2 core
(health, metadata, inference) is kept, which is also what Triton serves.

    .cache/venv/bin/python tools/proto_from_mlserver.py > server/proto/grpc_predict_v2.proto

Comments of the upstream .proto are not in the descriptor.
"""
import sys

from google.protobuf import descriptor_pb2
from mlserver.grpc import dataplane_pb2

CORE_RPCS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]

T = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    T.TYPE_BOOL: "bool", T.TYPE_INT32: "int32", T.TYPE_INT64: "int64",
    T.TYPE_UINT32: "uint32", T.TYPE_UINT64: "uint64", T.TYPE_FLOAT: "float",
    T.TYPE_DOUBLE: "double", T.TYPE_STRING: "string", T.TYPE_BYTES: "bytes",
}


def file_proto():
    p = descriptor_pb2.FileDescriptorProto()
    dataplane_pb2.DESCRIPTOR.CopyToProto(p)
    return p


def type_name(f):
    if f.type in SCALARS:
        return SCALARS[f.type]
    return f.type_name.rsplit(".", 1)[-1]


def render_message(m, indent, out):
    pad = "  " * indent
    out.append(f"{pad}message {m.name} {{")
    maps = {n.name: n for n in m.nested_type if n.options.map_entry}
    for n in m.nested_type:
        if not n.options.map_entry:
            render_message(n, indent + 1, out)
    oneof_fields = {}
    for f in m.field:
        if f.HasField("oneof_index"):
            oneof_fields.setdefault(f.oneof_index, []).append(f)
    done_oneofs = set()
    for f in m.field:
        if f.HasField("oneof_index"):
            i = f.oneof_index
            if i in done_oneofs:
                continue
            done_oneofs.add(i)
            out.append(f"{pad}  oneof {m.oneof_decl[i].name} {{")
            for g in oneof_fields[i]:
                out.append(f"{pad}    {type_name(g)} {g.name} = {g.number};")
            out.append(f"{pad}  }}")
            continue
        tn = type_name(f)
        if tn in maps:
            k, v = maps[tn].field
            out.append(f"{pad}  map<{type_name(k)}, {type_name(v)}> {f.name} = {f.number};")
        elif f.label == T.LABEL_REPEATED:
            out.append(f"{pad}  repeated {tn} {f.name} = {f.number};")
        else:
            out.append(f"{pad}  {tn} {f.name} = {f.number};")
    out.append(f"{pad}}}")


def needed_messages(p):
    by_name = {m.name: m for m in p.message_type}
    want, stack = set(), []
    for s in p.service:
        for r in s.method:
            if r.name in CORE_RPCS:
                stack += [r.input_type.rsplit(".", 1)[-1], r.output_type.rsplit(".", 1)[-1]]

    def refs(m):
        for f in m.field:
            if f.type == T.TYPE_MESSAGE:
                yield f.type_name.rsplit(".", 1)[-1]
        for n in m.nested_type:
            yield from refs(n)

    while stack:
        n = stack.pop()
        if n in by_name and n not in want:
            want.add(n)
            stack += list(refs(by_name[n]))
    return [m for m in p.message_type if m.name in want]


def render():
    p = file_proto()
    out = [
        "// KServe v2 inference protocol, gRPC: health, metadata and inference.",
        "//",
        "// Rendered by tools/proto_from_mlserver.py from the descriptor shipped in",
        "// the PyPI package mlserver==1.7.1 (mlserver/grpc/dataplane_pb2.py).",
        "// Copyright Seldon Technologies Ltd. and The KServe Authors,",
        "// Apache License 2.0 (see LICENSE-NOTICE.md next to this file).",
        "// Triton Inference Server serves the same messages and service name.",
        "",
        'syntax = "proto3";',
        "",
        f"package {p.package};",
        "",
        "service GRPCInferenceService {",
    ]
    for s in p.service:
        for r in s.method:
            if r.name in CORE_RPCS:
                i, o = r.input_type.rsplit(".", 1)[-1], r.output_type.rsplit(".", 1)[-1]
                out.append(f"  rpc {r.name}({i}) returns ({o}) {{}}")
    out.append("}")
    for m in needed_messages(p):
        out.append("")
        render_message(m, 0, out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
