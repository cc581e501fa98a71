#!/usr/bin/env python3
"""Derive wire-layout tables for the Kafka requests Tern decodes.

The `kafka-protocol` crate decodes arrays by reserving whatever element count the wire
declares, so Tern walks every request against a layout table first (see
`src/schema.rs`). This script derives those tables from the crate's generated decoders,
which are regular enough to read mechanically, and writes `src/schema_gen.rs`.

Run it after upgrading `kafka-protocol`:
    python3 broker/protocol/codegen/gen_schema.py
The round-trip tests in `src/schema.rs` check every table against the crate's encoder.
"""
import json
import pathlib
import re
import subprocess
import sys

REQUESTS = [
    "metadata_request", "list_offsets_request", "create_topics_request",
    "delete_topics_request", "create_partitions_request", "delete_records_request",
    "describe_configs_request", "alter_configs_request", "incremental_alter_configs_request",
    "describe_cluster_request", "api_versions_request", "fetch_request",
    "find_coordinator_request", "join_group_request", "heartbeat_request",
    "leave_group_request", "sync_group_request", "offset_commit_request",
    "offset_fetch_request", "describe_groups_request", "list_groups_request",
    "delete_groups_request", "offset_delete_request", "init_producer_id_request",
    "consumer_group_heartbeat_request", "consumer_group_describe_request",
    "offset_for_leader_epoch_request", "elect_leaders_request",
    "add_partitions_to_txn_request", "add_offsets_to_txn_request", "end_txn_request",
    "write_txn_markers_request", "txn_offset_commit_request",
    "describe_transactions_request", "list_transactions_request",
    "sasl_handshake_request", "sasl_authenticate_request",
    "describe_user_scram_credentials_request", "alter_user_scram_credentials_request",
    "create_acls_request", "describe_acls_request", "delete_acls_request",
    "describe_client_quotas_request", "alter_client_quotas_request",
]

PRIMS = {
    "Int8": "I8", "Int16": "I16", "Int32": "I32", "Int64": "I64", "UInt16": "I16",
    "Boolean": "Bool", "Uuid": "Uuid", "Float64": "I64",
    "String": "Str", "CompactString": "CompactStr",
    "Bytes": "Bytes", "CompactBytes": "CompactBytes",
}


def crate_dir():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1"], text=True))
    for package in meta["packages"]:
        if package["name"] == "kafka-protocol":
            return pathlib.Path(package["manifest_path"]).parent / "src" / "messages"
    sys.exit("kafka-protocol not found in cargo metadata")


def condition_range(cond):
    low, high = 0, 32767
    for op, value in re.findall(r"version\s*(>=|<=|==|>|<)\s*(\d+)", cond):
        value = int(value)
        if op == ">=": low = max(low, value)
        elif op == ">": low = max(low, value + 1)
        elif op == "<=": high = min(high, value)
        elif op == "<": high = min(high, value - 1)
        elif op == "==": low, high = value, value
    return low, high


def kind(expr, field_type):
    expr = expr.strip()
    m = re.fullmatch(r"types::(Compact)?Array\((.*)\)", expr)
    if m:
        compact = bool(m.group(1))
        inner = m.group(2).strip()
        arr = "CompactArray" if compact else "Array"
        if inner.startswith("types::Struct"):
            return f"Kind::{arr}(Elem::Struct(&{const_name(field_type)}))"
        prim = re.fullmatch(r"types::(\w+)", inner).group(1)
        return f"Kind::{arr}(Elem::Prim(Prim::{PRIMS[prim]}))"
    if expr.startswith("types::Struct"):
        return f"Kind::Struct(&{const_name(field_type)})"
    prim = re.fullmatch(r"types::(\w+)", expr).group(1)
    return f"Kind::Prim(Prim::{PRIMS[prim]})"


PREFIX = [""]


def const_name(type_name):
    # Nested struct names repeat across messages with different layouts, so every
    # table is named after its message too.
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).upper()
    if PREFIX[0] and not snake.endswith("_REQUEST"):
        return f"{PREFIX[0]}__{snake}"
    return snake


def parse_file(path):
    text = path.read_text()
    struct_fields = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        fields = {}
        for field, ty in re.findall(r"pub (\w+): ([^,]+),", body):
            inner = re.findall(r"(\w+)", ty)
            inner = [t for t in inner if t not in ("Option", "Vec", "Box")]
            fields[field] = inner[-1] if inner else ty
        struct_fields[name] = fields
    structs = {}
    for name, body in re.findall(
            r"impl Decodable for (\w+) \{\s*fn decode<B: ByteBuf>\(buf: &mut B, version: i16\) -> Result<Self> \{(.*?)\n        Ok\(Self", text, re.S):
        entries = []
        valid = re.search(r"if version < (\d+) \|\| version > (\d+)", body)
        nested = re.compile(
            r"let (\w+) = if ([^{]+)\{\s*if ([^{]+)\{\s*(types::[^;]*?)\.decode\(buf\)\?\s*\} else \{\s*(types::[^;]*?)\.decode\(buf\)\?\s*\}\s*\} else \{[^}]*\};", re.S)
        decoders_expected = len(re.findall(r"types::(?!UnsignedVarInt)[^;]*?\.decode\(buf\)\?", body.split("num_tagged_fields")[0]))
        decoders_seen = 0
        # Nested conditions (a field present in a version range, compact from a later
        # version) are rewritten into two plain entries before the main scan.
        positions = {}
        for m in nested.finditer(body):
            field_type = struct_fields.get(name, {}).get(m.group(1), "")
            low, high = condition_range(m.group(2))
            split, _ = condition_range(m.group(3))
            assert low <= split <= high + 1, (name, m.group(1))
            positions[m.start()] = [(split, high, kind(m.group(4), field_type)),
                                    (low, split - 1, kind(m.group(5), field_type))]
            decoders_seen += 2
        body_scan = nested.sub(lambda m: " " * len(m.group(0)), body)
        scanned = []
        for stmt in re.finditer(
                r"let (?:mut )?(\w+)(?::[^=]+)? = (if ([^{]+)\{\s*(types::[^;]*?)\.decode\(buf\)\?\s*\} else \{\s*(.*?)\s*\};|(types::[^;]*?)\.decode\(buf\)\?;)"
                r"|if version >= (\d+) \{\s*let num_tagged_fields", body_scan, re.S):
            entries = []
            scanned.append((stmt.start(), entries))
            if stmt.group(7):
                entries.append((int(stmt.group(7)), 32767, "Kind::TaggedFields"))
                continue
            field = stmt.group(1)
            if field in ("unknown_tagged_fields", "tag", "size"):
                # Inside a tagged-field section, which the walker skips by its sizes.
                continue
            if field == "num_tagged_fields":
                # Always-flexible messages read their tagged section unconditionally.
                entries.append((0, 32767, "Kind::TaggedFields"))
                continue
            field_type = struct_fields.get(name, {}).get(field, "")
            if stmt.group(6):
                entries.append((0, 32767, kind(stmt.group(6), field_type)))
                continue
            low, high = condition_range(stmt.group(3))
            entries.append((low, high, kind(stmt.group(4), field_type)))
            other = stmt.group(5)
            m = re.fullmatch(r"(types::.*?)\.decode\(buf\)\?", other.strip(), re.S)
            if m:
                # Only the shape `if version >= N { A } else { B }` appears with two decoders.
                assert high == 32767, (name, field)
                entries.append((0, low - 1, kind(m.group(1), field_type)))
        for start, items in positions.items():
            scanned.append((start, items))
        scanned.sort(key=lambda item: item[0])
        entries = [entry for _, items in scanned for entry in items]
        decoders_seen += sum(1 for e in entries if e[2] != "Kind::TaggedFields") - 2 * len(positions)
        assert decoders_seen == decoders_expected, (path.name, name, decoders_seen, decoders_expected)
        structs[name] = (entries, valid)
    return structs


def main():
    messages = crate_dir()
    out = [
        "//! Wire layouts of the requests Tern decodes, derived from the `kafka-protocol` crate.",
        "//!",
        "//! Generated by `broker/protocol/codegen/gen_schema.py`; do not edit by hand. The",
        "//! round-trip tests in `schema.rs` check each table against the crate's encoder.",
        "",
        "use super::schema::{Elem, Field, Kind, Prim, Struct};",
        "",
    ]
    roots = []
    for module in REQUESTS:
        PREFIX[0] = module.upper()
        structs = parse_file(messages / f"{module}.rs")
        for name, (entries, valid) in structs.items():
            out.append(f"pub static {const_name(name)}: Struct = Struct {{")
            out.append(f"    name: \"{name}\",")
            out.append("    fields: &[")
            for low, high, k in entries:
                out.append(f"        Field {{ versions: {low}..={high}, kind: {k} }},")
            out.append("    ],")
            out.append("};")
            out.append("")
        root = "".join(part.capitalize() for part in module.split("_"))
        roots.append(const_name(root))
    out.append("/// Every request root table, for tests and the fuzz target.")
    out.append("pub static ROOTS: &[&Struct] = &[")
    for root in roots:
        out.append(f"    &{root},")
    out.append("];")
    target = pathlib.Path(__file__).resolve().parent.parent / "src" / "schema_gen.rs"
    target.write_text("\n".join(out) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
