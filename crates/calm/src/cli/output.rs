//! How the client commands print: the `table` and `json` formats, boxed
//! tables, and byte strings shown as text with escapes.
//!
//! `table` is for people. A single value prints bare, like etcdctl's
//! `simple` format (`calm counter get` prints `5`, a write prints `OK`,
//! set members and register values print one per line); anything with
//! columns prints as a boxed table. `json` is for programs: one JSON object
//! per command on one line (an array for `members` and `status`), with the
//! key, the value, the answering node, the level and the causal token in
//! lower-case hex.
//!
//! Keys and values are byte strings. Printable UTF-8 prints as itself; a
//! backslash prints as `\\`, tab, newline and carriage return as `\t`,
//! `\n`, `\r`, other control characters and bytes that are not UTF-8 as
//! `\xNN` (`\u{NN}` for non-ASCII control characters). The same text goes
//! into JSON strings, so both formats show the same value.

use calm_client::{BoundedCounterValue, MapValue, Member, NodeStatus, RegisterValue, Reply};
use serde_json::{Value, json};

/// The `-w/--write-out` format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: bare values, boxed tables.
    #[default]
    Table,
    /// For programs: one JSON document on one line.
    Json,
}

/// `bytes` as text, escaped as the module documentation describes.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            escape_char(c, &mut text);
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

fn escape_char(c: char, text: &mut String) {
    match c {
        '\\' => text.push_str("\\\\"),
        '\n' => text.push_str("\\n"),
        '\t' => text.push_str("\\t"),
        '\r' => text.push_str("\\r"),
        c if c.is_ascii_control() => text.push_str(&format!("\\x{:02x}", c as u32)),
        c if c.is_control() => text.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => text.push(c),
    }
}

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: flush left.
    Left,
    /// Numbers: flush right, so digits line up.
    Right,
}

/// A boxed table, etcdctl style:
///
/// ```text
/// +---------+--------+
/// | NODE ID | RIGHTS |
/// +---------+--------+
/// |       1 |      4 |
/// +---------+--------+
/// ```
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row of already-escaped cells, one per column.
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.columns.len(), "one cell per column");
        self.rows.push(row);
    }

    /// The table as lines, each ending in a newline.
    pub fn render(&self) -> String {
        // Cells are escaped, so every char takes one column (wide CJK
        // characters excepted, which only skews the box).
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                let cells = self.rows.iter().map(|row| row[i].chars().count());
                cells.fold(header.chars().count(), usize::max)
            })
            .collect();
        let rule: String = widths
            .iter()
            .map(|width| format!("+{}", "-".repeat(width + 2)))
            .chain(["+\n".to_owned()])
            .collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let left = vec![Align::Left; self.columns.len()];
        let aligns: Vec<Align> = self.columns.iter().map(|(_, align)| *align).collect();
        let mut text = rule.clone();
        text.push_str(&line(&headers, &widths, &left));
        text.push_str(&rule);
        for row in &self.rows {
            text.push_str(&line(row, &widths, &aligns));
        }
        if !self.rows.is_empty() {
            text.push_str(&rule);
        }
        text
    }
}

fn line(cells: &[String], widths: &[usize], aligns: &[Align]) -> String {
    let mut text = String::new();
    for ((cell, width), align) in cells.iter().zip(widths).zip(aligns) {
        match align {
            Align::Left => text.push_str(&format!("| {cell:<width$} ")),
            Align::Right => text.push_str(&format!("| {cell:>width$} ")),
        }
    }
    text.push_str("|\n");
    text
}

/// Lines, each ending in a newline; nothing for no lines.
fn lines(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().map(|item| item + "\n").collect()
}

/// The JSON object every data command prints: key, answering node, level
/// and token, plus `fields`.
fn reply_json<T>(key: &str, reply: &Reply<T>, fields: Value) -> String {
    let mut object = json!({
        "key": escape_bytes(key.as_bytes()),
        "node_id": reply.node_id,
        "level": reply.level.map(|level| level.name()),
        "token": reply.token.to_hex(),
    });
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    object.to_string() + "\n"
}

fn escaped_list(items: &[Vec<u8>]) -> Vec<String> {
    items.iter().map(|item| escape_bytes(item)).collect()
}

/// A write's outcome: `OK`, or the JSON header.
pub fn write_done(format: Format, key: &str, reply: &Reply<()>) -> String {
    match format {
        Format::Table => "OK\n".to_owned(),
        Format::Json => reply_json(key, reply, json!({})),
    }
}

/// A counter's value.
pub fn counter(format: Format, key: &str, reply: &Reply<i64>) -> String {
    match format {
        Format::Table => format!("{}\n", reply.value),
        Format::Json => reply_json(key, reply, json!({ "value": reply.value })),
    }
}

/// A set's members, one per line.
pub fn set_members(format: Format, key: &str, reply: &Reply<Vec<Vec<u8>>>) -> String {
    let members = escaped_list(&reply.value);
    match format {
        Format::Table => lines(members),
        Format::Json => reply_json(key, reply, json!({ "members": members })),
    }
}

/// A register's value(s), one per line; its kind in JSON.
pub fn register(format: Format, key: &str, reply: &Reply<RegisterValue>) -> String {
    let values = escaped_list(&reply.value.values);
    match format {
        Format::Table => lines(values),
        Format::Json => {
            let kind = reply.value.kind.map(|kind| match kind {
                calm_client::RegisterKind::Lww => "lww",
                calm_client::RegisterKind::MultiValue => "multi",
            });
            reply_json(key, reply, json!({ "kind": kind, "values": values }))
        }
    }
}

/// A map's fields: a FIELD / KIND / VALUE table, or per-kind JSON objects.
pub fn map(format: Format, key: &str, reply: &Reply<MapValue>) -> String {
    let value = &reply.value;
    match format {
        Format::Table => {
            let mut table = Table::new(&[
                ("FIELD", Align::Left),
                ("KIND", Align::Left),
                ("VALUE", Align::Left),
            ]);
            for register in &value.registers {
                let values = escaped_list(&register.values).join(", ");
                table.push(vec![
                    escape_bytes(&register.field),
                    "register".into(),
                    values,
                ]);
            }
            for counter in &value.counters {
                let field = escape_bytes(&counter.field);
                table.push(vec![field, "counter".into(), counter.value.to_string()]);
            }
            for set in &value.sets {
                let members = format!("{{{}}}", escaped_list(&set.members).join(", "));
                table.push(vec![escape_bytes(&set.field), "set".into(), members]);
            }
            table.render()
        }
        Format::Json => {
            let registers: serde_json::Map<String, Value> = (value.registers.iter())
                .map(|r| (escape_bytes(&r.field), json!(escaped_list(&r.values))))
                .collect();
            let counters: serde_json::Map<String, Value> = (value.counters.iter())
                .map(|c| (escape_bytes(&c.field), json!(c.value)))
                .collect();
            let sets: serde_json::Map<String, Value> = (value.sets.iter())
                .map(|s| (escape_bytes(&s.field), json!(escaped_list(&s.members))))
                .collect();
            let fields = json!({ "registers": registers, "counters": counters, "sets": sets });
            reply_json(key, reply, fields)
        }
    }
}

/// A bounded counter: the value on the first line, then a table of the
/// rights each node holds.
pub fn bounded_counter(format: Format, key: &str, reply: &Reply<BoundedCounterValue>) -> String {
    let value = &reply.value;
    match format {
        Format::Table => {
            let mut table = Table::new(&[("NODE ID", Align::Right), ("RIGHTS", Align::Right)]);
            for rights in &value.rights {
                table.push(vec![rights.node_id.to_string(), rights.rights.to_string()]);
            }
            format!("{}\n{}", value.value, table.render())
        }
        Format::Json => {
            let rights: Vec<Value> = (value.rights.iter())
                .map(|r| json!({ "node_id": r.node_id, "rights": r.rights }))
                .collect();
            let fields = json!({
                "value": value.value,
                "local_rights": value.local_rights,
                "rights": rights,
            });
            reply_json(key, reply, fields)
        }
    }
}

/// The members table, or a JSON array of members.
pub fn members(format: Format, members: &[Member]) -> String {
    match format {
        Format::Table => {
            let mut table = Table::new(&[
                ("NODE ID", Align::Right),
                ("ADDRESS", Align::Left),
                ("STATE", Align::Left),
                ("INCARNATION", Align::Right),
                ("OWNERSHIP", Align::Right),
            ]);
            for member in members {
                table.push(vec![
                    member.node_id.to_string(),
                    escape_bytes(member.address.as_bytes()),
                    member.state.to_string(),
                    member.incarnation.to_string(),
                    format!("{:.1}%", member.ownership_fraction * 100.0),
                ]);
            }
            table.render()
        }
        Format::Json => {
            let members: Vec<Value> = (members.iter())
                .map(|m| {
                    json!({
                        "node_id": m.node_id,
                        "address": escape_bytes(m.address.as_bytes()),
                        "state": m.state.to_string(),
                        "incarnation": m.incarnation,
                        "ownership_fraction": m.ownership_fraction,
                    })
                })
                .collect();
            Value::Array(members).to_string() + "\n"
        }
    }
}

/// The status of each endpoint that answered, by endpoint.
pub fn statuses(format: Format, statuses: &[(String, NodeStatus)]) -> String {
    match format {
        Format::Table => {
            let mut table = Table::new(&[
                ("ENDPOINT", Align::Left),
                ("NODE ID", Align::Right),
                ("VERSION", Align::Left),
                ("CLUSTER", Align::Left),
                ("MEMBERS (ALIVE/TOTAL)", Align::Right),
                ("KEYS", Align::Right),
            ]);
            for (endpoint, status) in statuses {
                table.push(vec![
                    endpoint.clone(),
                    status.node_id.to_string(),
                    escape_bytes(status.server_version.as_bytes()),
                    escape_bytes(status.cluster_name.as_bytes()),
                    format!("{}/{}", status.members_alive, status.members_total),
                    status.keys.to_string(),
                ]);
            }
            table.render()
        }
        Format::Json => {
            let statuses: Vec<Value> = (statuses.iter())
                .map(|(endpoint, s)| {
                    json!({
                        "endpoint": endpoint,
                        "node_id": s.node_id,
                        "server_version": escape_bytes(s.server_version.as_bytes()),
                        "cluster_name": escape_bytes(s.cluster_name.as_bytes()),
                        "members_total": s.members_total,
                        "members_alive": s.members_alive,
                        "keys": s.keys,
                        "key_bytes_max": s.key_bytes_max,
                        "payload_bytes_max": s.payload_bytes_max,
                    })
                })
                .collect();
            Value::Array(statuses).to_string() + "\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_client::{
        CausalToken, Level, MapCounter, MapRegister, MapSet, MemberState, NodeRights,
    };

    fn reply<T>(value: T) -> Reply<T> {
        Reply {
            value,
            token: CausalToken::from_bytes(vec![0xca, 0x11]),
            node_id: 3,
            level: Some(Level::Local),
        }
    }

    fn parse(text: &str) -> Value {
        assert!(text.ends_with('\n'), "one line: {text:?}");
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        serde_json::from_str(text).expect("the output is JSON")
    }

    #[test]
    fn bytes_print_as_text_with_escapes() {
        let check = |bytes: &[u8], expected: &str| assert_eq!(escape_bytes(bytes), expected);
        check(b"plain", "plain");
        check("caf\u{e9}".as_bytes(), "caf\u{e9}");
        check(b"a\\b", "a\\\\b");
        check(b"tab\there\nnl\r", "tab\\there\\nnl\\r");
        check(b"\x00\x1b\x7f", "\\x00\\x1b\\x7f");
        check(b"bad\xff\xfeutf8", "bad\\xff\\xfeutf8");
        // A truncated multi-byte sequence is shown byte by byte.
        check(b"\xe2\x82", "\\xe2\\x82");
        check("\u{85}".as_bytes(), "\\u{85}");
        check(b"", "");
    }

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let mut table = Table::new(&[("ID", Align::Right), ("NAME", Align::Left)]);
        table.push(vec!["7".into(), "a".into()]);
        table.push(vec!["12345".into(), "longer name".into()]);
        let expected = "\
+-------+-------------+
| ID    | NAME        |
+-------+-------------+
|     7 | a           |
| 12345 | longer name |
+-------+-------------+
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn an_empty_table_prints_only_its_headers() {
        let table = Table::new(&[("FIELD", Align::Left)]);
        assert_eq!(table.render(), "+-------+\n| FIELD |\n+-------+\n");
    }

    #[test]
    fn table_width_counts_characters_not_bytes() {
        let mut table = Table::new(&[("K", Align::Left)]);
        table.push(vec!["\u{e9}\u{e9}".into()]);
        let rendered = table.render();
        let widths: Vec<usize> = rendered.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{rendered}");
    }

    #[test]
    fn simple_values_print_bare_in_table_format() {
        assert_eq!(write_done(Format::Table, "k", &reply(())), "OK\n");
        assert_eq!(counter(Format::Table, "k", &reply(-5)), "-5\n");
        let members = reply(vec![b"a".to_vec(), b"\xff".to_vec()]);
        assert_eq!(set_members(Format::Table, "k", &members), "a\n\\xff\n");
        assert_eq!(set_members(Format::Table, "k", &reply(Vec::new())), "");
    }

    #[test]
    fn json_carries_key_value_node_level_and_hex_token() {
        let value = parse(&counter(Format::Json, "hits", &reply(42)));
        assert_eq!(
            value,
            json!({
                "key": "hits",
                "value": 42,
                "node_id": 3,
                "level": "local",
                "token": "ca11",
            })
        );
        let write = parse(&write_done(Format::Json, "k\n", &reply(())));
        assert_eq!(write["key"], "k\\n");
        assert_eq!(write["token"], "ca11");
        assert!(write.get("value").is_none());
    }

    #[test]
    fn register_json_names_the_kind_and_lists_values() {
        let absent = parse(&register(
            Format::Json,
            "r",
            &reply(RegisterValue::default()),
        ));
        assert_eq!(absent["kind"], Value::Null);
        assert_eq!(absent["values"], json!([]));
        let multi = RegisterValue {
            kind: Some(calm_client::RegisterKind::MultiValue),
            values: vec![b"x".to_vec(), b"y".to_vec()],
        };
        let value = parse(&register(Format::Json, "r", &reply(multi.clone())));
        assert_eq!(value["kind"], "multi");
        assert_eq!(value["values"], json!(["x", "y"]));
        assert_eq!(register(Format::Table, "r", &reply(multi)), "x\ny\n");
    }

    fn sample_map() -> MapValue {
        MapValue {
            registers: vec![MapRegister {
                field: b"color".to_vec(),
                values: vec![b"blue".to_vec(), b"red".to_vec()],
            }],
            counters: vec![MapCounter {
                field: b"n".to_vec(),
                value: -2,
            }],
            sets: vec![MapSet {
                field: b"tags".to_vec(),
                members: vec![b"a".to_vec(), b"b".to_vec()],
            }],
        }
    }

    #[test]
    fn a_map_prints_one_row_per_field() {
        let expected = "\
+-------+----------+-----------+
| FIELD | KIND     | VALUE     |
+-------+----------+-----------+
| color | register | blue, red |
| n     | counter  | -2        |
| tags  | set      | {a, b}    |
+-------+----------+-----------+
";
        assert_eq!(map(Format::Table, "m", &reply(sample_map())), expected);
        let value = parse(&map(Format::Json, "m", &reply(sample_map())));
        assert_eq!(value["registers"], json!({ "color": ["blue", "red"] }));
        assert_eq!(value["counters"], json!({ "n": -2 }));
        assert_eq!(value["sets"], json!({ "tags": ["a", "b"] }));
    }

    #[test]
    fn a_bounded_counter_prints_its_value_then_the_rights_table() {
        let value = BoundedCounterValue {
            value: 10,
            local_rights: 4,
            rights: vec![
                NodeRights {
                    node_id: 1,
                    rights: 4,
                },
                NodeRights {
                    node_id: 12,
                    rights: 6,
                },
            ],
        };
        let expected = "\
10
+---------+--------+
| NODE ID | RIGHTS |
+---------+--------+
|       1 |      4 |
|      12 |      6 |
+---------+--------+
";
        assert_eq!(
            bounded_counter(Format::Table, "b", &reply(value.clone())),
            expected
        );
        let json = parse(&bounded_counter(Format::Json, "b", &reply(value)));
        assert_eq!(json["value"], 10);
        assert_eq!(json["local_rights"], 4);
        assert_eq!(
            json["rights"],
            json!([
                { "node_id": 1, "rights": 4 },
                { "node_id": 12, "rights": 6 },
            ])
        );
    }

    fn member(node_id: u64, state: MemberState, ownership_fraction: f64) -> Member {
        Member {
            node_id,
            address: format!("127.0.0.1:{}", 2378 + node_id),
            state,
            incarnation: node_id,
            ownership_fraction,
        }
    }

    #[test]
    fn members_show_state_and_ownership_percent_with_one_decimal() {
        let list = [
            member(1, MemberState::Alive, 0.33333),
            member(2, MemberState::Dead, 0.66667),
        ];
        let expected = "\
+---------+----------------+-------+-------------+-----------+
| NODE ID | ADDRESS        | STATE | INCARNATION | OWNERSHIP |
+---------+----------------+-------+-------------+-----------+
|       1 | 127.0.0.1:2379 | alive |           1 |     33.3% |
|       2 | 127.0.0.1:2380 | dead  |           2 |     66.7% |
+---------+----------------+-------+-------------+-----------+
";
        assert_eq!(members(Format::Table, &list), expected);
        let json = parse(&members(Format::Json, &list));
        let array = json.as_array().expect("members print as an array");
        assert_eq!(array.len(), 2);
        assert_eq!(array[1]["state"], "dead");
        assert_eq!(array[1]["address"], "127.0.0.1:2380");
        assert_eq!(array[0]["ownership_fraction"], 0.33333);
    }

    #[test]
    fn status_prints_a_row_per_endpoint() {
        let status = NodeStatus {
            node_id: 1,
            server_version: "0.1.0".into(),
            cluster_name: "calm".into(),
            members_total: 3,
            members_alive: 2,
            keys: 17,
            key_bytes_max: 1024,
            payload_bytes_max: 65536,
        };
        let rows = [("127.0.0.1:2379".to_owned(), status)];
        let table = statuses(Format::Table, &rows);
        assert!(
            table.contains(
                "| 127.0.0.1:2379 |       1 | 0.1.0   | calm    |                   2/3 |   17 |"
            ),
            "{table}"
        );
        let json = parse(&statuses(Format::Json, &rows));
        assert_eq!(json[0]["endpoint"], "127.0.0.1:2379");
        assert_eq!(json[0]["members_alive"], 2);
    }
}
