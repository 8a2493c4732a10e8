//! The client commands' command line: the global flags and one subcommand
//! per service, shaped like etcdctl (`calm counter incr KEY --by 3`).

use std::time::Duration;

use calm_client::Level;

use super::output::Format;

/// Flags every command takes, before or after the subcommand.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Client endpoints, host:port, comma-separated; requests fail over
    /// from one to the next.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CALM_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// Output format: `table` prints bare values and boxed tables, `json`
    /// one JSON document with the causal token in hex.
    #[arg(
        short = 'w',
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value_t = Format::Table
    )]
    pub write_out: Format,

    /// Deadline of each request, failover included (e.g. 500ms, 5s, 1m).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_parser = parse_duration,
        default_value = "5s"
    )]
    pub command_timeout: Duration,

    /// The coordination level of data requests (`local` means `quorum` for
    /// `calm kv`); servers answer UNIMPLEMENTED for a level a service does
    /// not offer (`linearizable` for CRDT types and `kv`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value_t = LevelArg::Local
    )]
    pub level: LevelArg,
}

/// `--level`: the coordination levels, as `calm.proto` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    /// Durable on the receiving node, replicated asynchronously.
    Local,
    /// One of the key's replicas.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// All of the key's replicas.
    All,
    /// Linearizable, through the coordinated keyspace.
    Linearizable,
}

impl From<LevelArg> for Level {
    fn from(level: LevelArg) -> Level {
        match level {
            LevelArg::Local => Level::Local,
            LevelArg::One => Level::One,
            LevelArg::Quorum => Level::Quorum,
            LevelArg::All => Level::All,
            LevelArg::Linearizable => Level::Linearizable,
        }
    }
}

/// The client commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// PN-counters: increments commute, so any node takes them at once.
    #[command(subcommand)]
    Counter(CounterCommand),
    /// Add-wins sets of byte strings.
    #[command(subcommand)]
    Set(SetCommand),
    /// Registers of one value: last writer wins, or multi-value.
    #[command(subcommand)]
    Register(RegisterCommand),
    /// Maps of register, counter and set fields.
    #[command(subcommand)]
    Map(MapCommand),
    /// Bounded counters: never below zero, decrements spend a node's rights.
    #[command(subcommand, name = "bcounter")]
    BoundedCounter(BoundedCounterCommand),
    /// Plain values replicated without a leader at one, quorum or all, with
    /// siblings and causal contexts.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Lists the cluster's members as the answering node sees them.
    Members,
    /// Shows the status of every endpoint.
    Status,
}

/// `calm counter ...`
#[derive(Debug, clap::Subcommand)]
pub enum CounterCommand {
    /// Adds to a counter (a negative amount subtracts).
    Incr {
        /// The key.
        key: String,
        /// The amount, not zero; `--by -3` subtracts 3.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = non_zero_i64)]
        by: i64,
    },
    /// Prints a counter's value (an absent key reads 0).
    Get {
        /// The key.
        key: String,
    },
}

/// `calm set ...`
#[derive(Debug, clap::Subcommand)]
pub enum SetCommand {
    /// Adds a member.
    Add {
        /// The key.
        key: String,
        /// The member.
        member: String,
    },
    /// Removes a member, as far as the answering node has seen it.
    #[command(alias = "remove")]
    Rm {
        /// The key.
        key: String,
        /// The member.
        member: String,
    },
    /// Prints the members, one per line.
    Members {
        /// The key.
        key: String,
    },
}

/// `calm register ...`
#[derive(Debug, clap::Subcommand)]
pub enum RegisterCommand {
    /// Writes the value.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Create a multi-value register (concurrent writes are all kept)
        /// instead of a last-writer-wins one.
        #[arg(long)]
        multi: bool,
    },
    /// Prints the value; a multi-value register prints every sibling, one
    /// per line.
    Get {
        /// The key.
        key: String,
        /// Fail unless the key holds a multi-value register (or nothing).
        #[arg(long)]
        multi: bool,
    },
}

/// `calm map ...`
#[derive(Debug, clap::Subcommand)]
pub enum MapCommand {
    /// Writes a register field.
    Set {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// Adds to a counter field (a negative amount subtracts).
    Incr {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The amount, not zero.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = non_zero_i64)]
        by: i64,
    },
    /// Adds a member to a set field.
    Add {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The member.
        member: String,
    },
    /// Removes a member from a set field.
    RmMember {
        /// The key.
        key: String,
        /// The field.
        field: String,
        /// The member.
        member: String,
    },
    /// Removes a field (of every kind).
    Rm {
        /// The key.
        key: String,
        /// The field.
        field: String,
    },
    /// Prints every field.
    Get {
        /// The key.
        key: String,
    },
}

/// `calm bcounter ...`
#[derive(Debug, clap::Subcommand)]
pub enum BoundedCounterCommand {
    /// Adds AMOUNT, creating as many rights at the answering node.
    Incr {
        /// The key.
        key: String,
        /// The amount, at least 1.
        #[arg(value_parser = positive_u64)]
        amount: u64,
    },
    /// Subtracts AMOUNT, spending the answering node's rights.
    Decr {
        /// The key.
        key: String,
        /// The amount, at least 1.
        #[arg(value_parser = positive_u64)]
        amount: u64,
    },
    /// Moves AMOUNT of the answering node's rights to another node.
    Transfer {
        /// The key.
        key: String,
        /// The node receiving the rights.
        #[arg(long = "to", value_name = "NODE")]
        to_node_id: u64,
        /// The amount, at least 1.
        #[arg(value_parser = positive_u64)]
        amount: u64,
    },
    /// Prints the value and the rights each node holds.
    Get {
        /// The key.
        key: String,
    },
}

fn non_zero_i64(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(0) => Err("must not be zero".to_owned()),
        Ok(amount) => Ok(amount),
        Err(error) => Err(error.to_string()),
    }
}

fn positive_u64(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(amount) => Ok(amount),
        Err(error) => Err(error.to_string()),
    }
}

/// Parses a command timeout: a Go-style duration (which etcdctl's flags
/// take) as `calm bench` reads its durations, `250ms`, `5s`, `1.5s`, `2m`,
/// `1h`, at most a day, and more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match calm_bench::parse_duration(text)? {
        Duration::ZERO => Err("the timeout must be more than zero".to_owned()),
        timeout => Ok(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_go_style_units() {
        let check =
            |text: &str, expected: Result<Duration, &str>| match (parse_duration(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            };
        check("5s", Ok(Duration::from_secs(5)));
        check("250ms", Ok(Duration::from_millis(250)));
        check("1.5s", Ok(Duration::from_millis(1500)));
        check("2m", Ok(Duration::from_secs(120)));
        check("1h", Ok(Duration::from_secs(3600)));
        check("5", Err("no unit"));
        check("s", Err("number"));
        check("1.2.3s", Err("number"));
        check("5d", Err("unknown unit"));
        check("0s", Err("more than zero"));
        check("25h", Err("at most 24h"));
        check("-1s", Err("number"));
    }

    #[test]
    fn amounts_refuse_zero() {
        assert_eq!(non_zero_i64("-3"), Ok(-3));
        assert!(non_zero_i64("0").is_err());
        assert!(non_zero_i64("x").is_err());
        assert_eq!(positive_u64("7"), Ok(7));
        assert!(positive_u64("0").is_err());
        assert!(positive_u64("-1").is_err());
    }
}

/// The flags every `kv` command takes besides the global `--level`, which
/// says how many replicas answer: `one`, `quorum` or `all` (the global
/// default, `local`, means `quorum` here; `linearizable` is refused).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct KvFlags {
    /// Replicas of the key for this request [default: the node's --replication-factor].
    #[arg(long)]
    pub n: Option<u32>,
    /// Replies a read waits for [default: the level's].
    #[arg(long)]
    pub r: Option<u32>,
    /// Acks a write waits for [default: the level's].
    #[arg(long)]
    pub w: Option<u32>,
}

/// `calm kv ...`
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Writes a value; without --context it is a blind write, kept beside
    /// whatever is there as a sibling.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The context (hex) a `kv get` printed: supersedes exactly the
        /// siblings that read returned.
        #[arg(long, value_parser = parse_hex)]
        context: Option<HexBytes>,
        #[command(flatten)]
        flags: KvFlags,
    },
    /// Prints every sibling (`<deleted>` for a concurrent delete) and the
    /// context to write back with.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        flags: KvFlags,
    },
    /// Deletes: writes a tombstone superseding what --context saw.
    Del {
        /// The key.
        key: String,
        /// The context (hex) a `kv get` printed; without it the delete is
        /// concurrent with every value, which stays as a sibling.
        #[arg(long, value_parser = parse_hex)]
        context: Option<HexBytes>,
        #[command(flatten)]
        flags: KvFlags,
    },
}

/// Bytes given on the command line in hex (a `kv` context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

/// Parses lower- or upper-case hex, as `kv get` prints contexts.
pub fn parse_hex(text: &str) -> Result<HexBytes, String> {
    if !text.len().is_multiple_of(2) {
        return Err("hex needs an even number of digits".to_owned());
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{:?} is not hex", text.get(at..at + 2).unwrap_or(text)))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(HexBytes)
}
