//! `calm kv put|get|del`: the `Kv` service from the command line, and how
//! its siblings and contexts print.
//!
//! `table`: one line per sibling (the value as text with the usual escapes,
//! `<deleted>` for a tombstone), then `context: <hex>`; a write prints `OK`
//! and the new context. `json`: `{"key", "node_id", "siblings":
//! [{"value", "tombstone"}], "context", "replies" | "acks", "hinted_acks"}`.

use calm_client::{Client, KvOptions, KvValue, KvWritten};
use serde_json::json;

use super::CliError;
use super::args::{HexBytes, KvCommand, KvFlags};
use super::output::{Format, escape_bytes};

/// Runs one `kv` command.
pub(super) async fn run(
    client: &Client,
    format: Format,
    command: KvCommand,
) -> Result<String, CliError> {
    Ok(match command {
        KvCommand::Put {
            key,
            value,
            context,
            flags,
        } => {
            let options = options(&flags, context);
            written(format, &key, &client.kv_put(&key, value, &options).await?)
        }
        KvCommand::Get { key, flags } => {
            let options = options(&flags, None);
            read(format, &key, &client.kv_get(&key, &options).await?)
        }
        KvCommand::Del {
            key,
            context,
            flags,
        } => {
            let options = options(&flags, context);
            written(format, &key, &client.kv_delete(&key, &options).await?)
        }
    })
}

fn options(flags: &KvFlags, context: Option<HexBytes>) -> KvOptions {
    KvOptions {
        // The client's level (the global `--level`) applies.
        level: None,
        context: context.map(|hex| hex.0).unwrap_or_default(),
        n: flags.n,
        r: flags.r,
        w: flags.w,
    }
}

/// A read: every sibling, then the context.
pub(super) fn read(format: Format, key: &str, value: &KvValue) -> String {
    match format {
        Format::Table => {
            let mut out: String = value
                .siblings
                .iter()
                .map(|sibling| sibling_text(sibling.as_deref()) + "\n")
                .collect();
            out += &format!("context: {}\n", hex(&value.context));
            out
        }
        Format::Json => {
            json!({
                "key": escape_bytes(key.as_bytes()),
                "node_id": value.node_id,
                "siblings": siblings_json(&value.siblings),
                "context": hex(&value.context),
                "replies": value.replies,
            })
            .to_string()
                + "\n"
        }
    }
}

/// A put or delete: `OK` and the new context.
pub(super) fn written(format: Format, key: &str, written: &KvWritten) -> String {
    match format {
        Format::Table => format!("OK\ncontext: {}\n", hex(&written.context)),
        Format::Json => {
            json!({
                "key": escape_bytes(key.as_bytes()),
                "node_id": written.node_id,
                "siblings": siblings_json(&written.siblings),
                "context": hex(&written.context),
                "acks": written.acks,
                "hinted_acks": written.hinted_acks,
            })
            .to_string()
                + "\n"
        }
    }
}

fn sibling_text(sibling: Option<&[u8]>) -> String {
    sibling.map_or_else(|| "<deleted>".to_owned(), escape_bytes)
}

fn siblings_json(siblings: &[Option<Vec<u8>>]) -> serde_json::Value {
    siblings
        .iter()
        .map(|sibling| {
            json!({
                "value": sibling.as_deref().map(escape_bytes).unwrap_or_default(),
                "tombstone": sibling.is_none(),
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::args::parse_hex;
    use super::*;

    fn value() -> KvValue {
        KvValue {
            siblings: vec![Some(b"blue".to_vec()), None, Some(b"a\nb".to_vec())],
            context: vec![0x01, 0xab],
            replies: 2,
            node_id: 3,
        }
    }

    #[test]
    fn a_read_prints_every_sibling_then_the_context() {
        assert_eq!(
            read(Format::Table, "colour", &value()),
            "blue\n<deleted>\na\\nb\ncontext: 01ab\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&read(Format::Json, "colour", &value())).unwrap();
        assert_eq!(json["siblings"][1]["tombstone"], true);
        assert_eq!(json["siblings"][0]["value"], "blue");
        assert_eq!(
            (json["context"].as_str(), json["replies"].as_u64()),
            (Some("01ab"), Some(2))
        );
    }

    #[test]
    fn bytes_that_are_not_text_print_escaped_and_an_absent_key_prints_only_its_context() {
        let binary = KvValue {
            siblings: vec![Some(vec![0xff, b'o', b'k', 0x00])],
            context: Vec::new(),
            replies: 3,
            node_id: 1,
        };
        assert_eq!(
            read(Format::Table, "k", &binary),
            "\\xffok\\x00\ncontext: \n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&read(Format::Json, "k", &binary)).unwrap();
        assert_eq!(json["siblings"][0]["value"], "\\xffok\\x00");
        let absent = KvValue {
            siblings: Vec::new(),
            ..value()
        };
        assert_eq!(read(Format::Table, "k", &absent), "context: 01ab\n");
    }

    #[test]
    fn a_printed_context_parses_back_to_the_same_bytes() {
        let context = vec![0x00, 0x7f, 0xff, 0x10];
        assert_eq!(parse_hex(&hex(&context)), Ok(HexBytes(context)));
        assert_eq!(parse_hex("ABcd"), Ok(HexBytes(vec![0xab, 0xcd])));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn a_write_prints_ok_and_its_context() {
        let written = KvWritten {
            siblings: vec![Some(b"teal".to_vec())],
            context: vec![0xfe],
            acks: 2,
            hinted_acks: 1,
            node_id: 1,
        };
        assert_eq!(written_text(&written), "OK\ncontext: fe\n");
        let json: serde_json::Value =
            serde_json::from_str(&super::written(Format::Json, "k", &written)).unwrap();
        assert_eq!(
            (json["acks"].as_u64(), json["hinted_acks"].as_u64()),
            (Some(2), Some(1))
        );
    }

    fn written_text(written: &KvWritten) -> String {
        super::written(Format::Table, "k", written)
    }
}
