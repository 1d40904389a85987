//! Wire compatibility of everything services send each other: the gRPC
//! messages and the topic payloads, which outlive any one version of the
//! code (records stay in the log; a rolling upgrade runs two versions side
//! by side).
//!
//! - `proto/wire.lock` records every field (number, label, type), enum
//!   value and gRPC method there has been. A `.proto` change that removes
//!   a field (without `reserved`), renumbers it or changes its type or
//!   label fails here. New fields fail too until the lock records them:
//!   `UPDATE_WIRE_LOCK=1 cargo test -p ganglion-api --test wire_compatibility`,
//!   then commit `proto/wire.lock` and `proto/fixtures/`.
//! - `proto/fixtures/` holds a golden record of every message, written
//!   when the message first appeared (every field set). Today's schema must
//!   read each: every field in it known with the same wire type, all the
//!   way down; and each topic payload decodes with today's Rust types and
//!   encodes back to the same bytes (nothing it held was dropped).

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn updating() -> bool {
    std::env::var("UPDATE_WIRE_LOCK").is_ok_and(|v| v == "1")
}

/// Today's schema: every message by full name (`.ganglion.topics.X`).
struct Schema {
    messages: BTreeMap<String, DescriptorProto>,
    /// `key = value` lines, as in the lock.
    lines: BTreeMap<String, String>,
}

fn schema() -> Schema {
    let set = FileDescriptorSet::decode(ganglion_api::PROTO_DESCRIPTORS).expect("descriptors");
    let mut schema = Schema {
        messages: BTreeMap::new(),
        lines: BTreeMap::new(),
    };
    for file in &set.file {
        let package = format!(".{}", file.package());
        for message in &file.message_type {
            add_message(&mut schema, &package, message);
        }
        for enumeration in &file.enum_type {
            add_enum(&mut schema, &package, enumeration);
        }
        for service in &file.service {
            for method in &service.method {
                schema.lines.insert(
                    format!("rpc {package}.{} {}", service.name(), method.name()),
                    format!("{} -> {}", method.input_type(), method.output_type()),
                );
            }
        }
    }
    schema
}

fn add_message(schema: &mut Schema, scope: &str, message: &DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    for field in &message.field {
        schema.lines.insert(
            format!("field {name} {}", field.number()),
            format!("{} | {}", field_type(field), field.name()),
        );
    }
    for nested in &message.nested_type {
        add_message(schema, &name, nested);
    }
    for enumeration in &message.enum_type {
        add_enum(schema, &name, enumeration);
    }
    schema.messages.insert(name, message.clone());
}

fn add_enum(schema: &mut Schema, scope: &str, enumeration: &prost_types::EnumDescriptorProto) {
    let name = format!("{scope}.{}", enumeration.name());
    for value in &enumeration.value {
        schema.lines.insert(
            format!("enum {name} {}", value.number()),
            format!("value | {}", value.name()),
        );
    }
}

/// What must not change about a field: its label and type.
fn field_type(field: &FieldDescriptorProto) -> String {
    let label = match field.label() {
        Label::Repeated => "repeated",
        _ if field.proto3_optional() => "optional",
        _ => "singular",
    };
    let kind = match field.r#type() {
        Type::Message | Type::Enum => field.type_name().to_owned(),
        other => other.as_str_name().to_lowercase(),
    };
    format!("{label} {kind}")
}

/// Whether the lock's `key` is a field or enum value its message or enum
/// now reserves (removed on purpose).
fn reserved(schema: &Schema, key: &str) -> bool {
    let mut parts = key.split(' ');
    let (Some("field"), Some(message), Some(number)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(number) = number.parse::<i32>() else {
        return false;
    };
    schema.messages.get(message).is_some_and(|m| {
        m.reserved_range
            .iter()
            .any(|r| (r.start()..r.end()).contains(&number))
    })
}

fn read_lock() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(proto_dir().join("wire.lock")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The part of a value that must not change (names may).
fn contract(value: &str) -> &str {
    value.split(" | ").next().unwrap_or(value)
}

#[test]
fn the_schema_keeps_every_field_it_ever_had() {
    let schema = schema();
    let lock = read_lock();
    let mut broken = Vec::new();
    for (key, value) in &lock {
        match schema.lines.get(key) {
            Some(now) if contract(now) == contract(value) => {}
            Some(now) => broken.push(format!("{key}: was `{value}`, now `{now}`")),
            None if reserved(&schema, key) => {}
            None => broken.push(format!(
                "{key}: was `{value}`, now gone (reserve its number)"
            )),
        }
    }
    assert!(
        broken.is_empty(),
        "incompatible changes to proto/:\n{}",
        broken.join("\n")
    );
    let new: Vec<&String> = schema
        .lines
        .keys()
        .filter(|k| !lock.contains_key(*k))
        .collect();
    if updating() {
        let mut merged = lock.clone();
        merged.extend(schema.lines.clone());
        let mut text = String::from(
            "# Every field, enum value and gRPC method the protocol has had:\n\
             # services/api/tests/wire_compatibility.rs checks that none changes.\n",
        );
        for (key, value) in &merged {
            text.push_str(&format!("{key} = {value}\n"));
        }
        std::fs::write(proto_dir().join("wire.lock"), text).expect("write the lock");
    } else {
        assert!(
            new.is_empty(),
            "proto/wire.lock does not record {} new entries (first: {:?}); run \
             UPDATE_WIRE_LOCK=1 cargo test -p ganglion-api --test wire_compatibility \
             and commit proto/wire.lock and proto/fixtures/",
            new.len(),
            new.first()
        );
    }
}

// ---- golden records ----

fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn key(number: i32, wire: u8, out: &mut Vec<u8>) {
    varint(((number as u64) << 3) | u64::from(wire), out);
}

/// The wire type a field is written with (packed repeated scalars: 2).
fn wire_type(field: &FieldDescriptorProto) -> u8 {
    match field.r#type() {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
        Type::String | Type::Bytes | Type::Message | Type::Group => 2,
        _ => 0,
    }
}

/// One non-default value of a scalar field, without its key.
fn scalar(field: &FieldDescriptorProto, out: &mut Vec<u8>) {
    match field.r#type() {
        Type::Double => out.extend(1.5f64.to_le_bytes()),
        Type::Float => out.extend(1.5f32.to_le_bytes()),
        Type::Fixed64 | Type::Sfixed64 => out.extend(7u64.to_le_bytes()),
        Type::Fixed32 | Type::Sfixed32 => out.extend(7u32.to_le_bytes()),
        Type::Sint32 | Type::Sint64 => varint(14, out),
        _ => varint(1, out),
    }
}

/// A record of `message` with every field set (one element for repeated
/// fields, the first member of each oneof), in field-number order as
/// prost writes them; nested messages to a depth of three.
fn golden(schema: &Schema, message: &DescriptorProto, depth: usize) -> Vec<u8> {
    let mut fields: Vec<&FieldDescriptorProto> = message.field.iter().collect();
    fields.sort_by_key(|f| f.number());
    let mut oneofs_done = std::collections::HashSet::new();
    let mut out = Vec::new();
    for field in fields {
        if let Some(index) = field.oneof_index
            && !field.proto3_optional()
            && !oneofs_done.insert(index)
        {
            continue;
        }
        let repeated = field.label() == Label::Repeated;
        match field.r#type() {
            Type::Message | Type::Group => {
                if depth == 0 {
                    continue;
                }
                let Some(inner) = schema.messages.get(field.type_name()) else {
                    continue;
                };
                let bytes = golden(schema, inner, depth - 1);
                key(field.number(), 2, &mut out);
                varint(bytes.len() as u64, &mut out);
                out.extend(bytes);
            }
            Type::String => {
                key(field.number(), 2, &mut out);
                varint(1, &mut out);
                out.push(b'x');
            }
            Type::Bytes => {
                key(field.number(), 2, &mut out);
                varint(1, &mut out);
                out.push(1);
            }
            _ if repeated => {
                let mut packed = Vec::new();
                scalar(field, &mut packed);
                key(field.number(), 2, &mut out);
                varint(packed.len() as u64, &mut out);
                out.extend(packed);
            }
            _ => {
                key(field.number(), wire_type(field), &mut out);
                scalar(field, &mut out);
            }
        }
    }
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads `bytes` as `message` by today's schema: every field known (or
/// reserved) with the wire type it has today, nested messages too.
fn readable(schema: &Schema, message: &DescriptorProto, bytes: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at).ok_or("truncated key")?;
        let (number, wire) = ((tag >> 3) as i32, (tag & 7) as u8);
        let field = message.field.iter().find(|f| f.number() == number);
        let length = match wire {
            0 => {
                read_varint(bytes, &mut at).ok_or("truncated varint")?;
                0
            }
            1 => 8,
            5 => 4,
            2 => read_varint(bytes, &mut at).ok_or("truncated length")? as usize,
            other => return Err(format!("field {number}: wire type {other}")),
        };
        let body = bytes
            .get(at..at + length)
            .ok_or_else(|| format!("field {number}: truncated"))?;
        at += length;
        let Some(field) = field else {
            let reserved = message
                .reserved_range
                .iter()
                .any(|r| (r.start()..r.end()).contains(&number));
            if reserved {
                continue;
            }
            return Err(format!(
                "{}: field {number} is unknown today",
                message.name()
            ));
        };
        let packed = wire == 2 && field.label() == Label::Repeated && wire_type(field) != 2;
        if wire != wire_type(field) && !packed {
            return Err(format!(
                "{}.{}: written as wire type {wire}, read as {}",
                message.name(),
                field.name(),
                wire_type(field)
            ));
        }
        if field.r#type() == Type::Message {
            let inner = schema
                .messages
                .get(field.type_name())
                .ok_or_else(|| format!("{} is unknown today", field.type_name()))?;
            readable(schema, inner, body)?;
        }
    }
    Ok(())
}

fn fixture_path(name: &str) -> PathBuf {
    proto_dir()
        .join("fixtures")
        .join(format!("{}.bin", name.trim_start_matches('.')))
}

#[test]
fn every_golden_record_reads_with_todays_schema() {
    let schema = schema();
    let mut unreadable = Vec::new();
    let mut missing = Vec::new();
    for (name, message) in &schema.messages {
        if message.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let path = fixture_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) if updating() => {
                let bytes = golden(&schema, message, 3);
                std::fs::create_dir_all(path.parent().expect("a folder")).expect("fixtures");
                std::fs::write(&path, &bytes).expect("write a fixture");
                bytes
            }
            Err(_) => {
                missing.push(name.clone());
                continue;
            }
        };
        if let Err(error) = readable(&schema, message, &bytes) {
            unreadable.push(format!("{name}: {error}"));
        }
    }
    assert!(
        unreadable.is_empty(),
        "golden records today's schema cannot read:\n{}",
        unreadable.join("\n")
    );
    assert!(
        missing.is_empty(),
        "messages without a golden record (run with UPDATE_WIRE_LOCK=1): {missing:?}"
    );
}

/// The topic payloads, the records the log keeps for ever: each golden
/// record decodes with today's Rust type and encodes back to itself.
#[test]
fn topic_payloads_decode_and_keep_every_field() {
    use ganglion_api::proto::topics as t;
    fn check<M: Message + Default>(name: &str) -> Option<String> {
        let bytes = std::fs::read(fixture_path(name)).ok()?;
        match M::decode(bytes.as_slice()) {
            Ok(decoded) if decoded.encode_to_vec() == bytes => None,
            Ok(_) => Some(format!("{name}: decoded, but some of it was dropped")),
            Err(error) => Some(format!("{name}: {error}")),
        }
    }
    let schema = schema();
    let topic_messages: Vec<&String> = schema
        .messages
        .keys()
        .filter(|n| n.starts_with(".ganglion.topics."))
        .collect();
    type Check = fn(&str) -> Option<String>;
    let checked: [(&str, Check); 21] = [
        (
            ".ganglion.topics.RoomserverInput",
            check::<t::RoomserverInput>,
        ),
        (".ganglion.topics.ForgetRoom", check::<t::ForgetRoom>),
        (".ganglion.topics.InputPdus", check::<t::InputPdus>),
        (
            ".ganglion.topics.NewLocalEvents",
            check::<t::NewLocalEvents>,
        ),
        (".ganglion.topics.NewRoom", check::<t::NewRoom>),
        (
            ".ganglion.topics.RoomserverOutput",
            check::<t::RoomserverOutput>,
        ),
        (".ganglion.topics.OutlierBatch", check::<t::OutlierBatch>),
        (
            ".ganglion.topics.RemoteMembership",
            check::<t::RemoteMembership>,
        ),
        (
            ".ganglion.topics.InviteReceived",
            check::<t::InviteReceived>,
        ),
        (".ganglion.topics.RoomForgotten", check::<t::RoomForgotten>),
        (".ganglion.topics.RedactedEvent", check::<t::RedactedEvent>),
        (".ganglion.topics.StateEntry", check::<t::StateEntry>),
        (".ganglion.topics.NewRoomEvent", check::<t::NewRoomEvent>),
        (
            ".ganglion.topics.DestinationWork",
            check::<t::DestinationWork>,
        ),
        (".ganglion.topics.TypingEdu", check::<t::TypingEdu>),
        (".ganglion.topics.ReceiptEdu", check::<t::ReceiptEdu>),
        (".ganglion.topics.PresenceEdu", check::<t::PresenceEdu>),
        (".ganglion.topics.ToDeviceEdu", check::<t::ToDeviceEdu>),
        (".ganglion.topics.DeviceMessage", check::<t::DeviceMessage>),
        (
            ".ganglion.topics.AccountDataUpdate",
            check::<t::AccountDataUpdate>,
        ),
        (
            ".ganglion.topics.DeviceKeyChange",
            check::<t::DeviceKeyChange>,
        ),
    ];
    let failures: Vec<String> = checked
        .iter()
        .filter_map(|(name, check)| check(name))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every message of topics.proto is checked here.
    assert_eq!(topic_messages.len(), checked.len(), "{topic_messages:?}");
}
